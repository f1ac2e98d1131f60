#!/usr/bin/env bash
# Two silica replicas behind a real HAProxy, scraped by a real Prometheus, driven by the real
# `openai` client while each replica in turn is restarted (SIGTERM → drain → start again):
#   - zero failed requests (the client's retries are off; HAProxy's health checks on /health,
#     which answers 503 while a replica drains or loads, and its L7 retries on a refused
#     connection cover the restart);
#   - each replica's drain time (SIGTERM to exit) is reported;
#   - Prometheus' HTTP API returns the vllm:* series of both replicas, model_name labelled.
# HAProxy and Prometheus are Debian packages, installed when missing; the openai client comes
# from scripts/requirements-serve.txt in .venv-serve.
#
# Usage: scripts/deploy_check.sh [seconds of load per phase, default 4]
set -euo pipefail
cd "$(dirname "$0")/.."
PHASE=${1:-4}
# A negative control: DRAIN_TIMEOUT=0 aborts what is in flight at SIGTERM, and requests fail.
DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-10}
WORK=target/deploy-check
rm -rf "$WORK"; mkdir -p "$WORK"
missing=
command -v haproxy >/dev/null || missing="$missing haproxy"
command -v prometheus >/dev/null || missing="$missing prometheus"
command -v curl >/dev/null || missing="$missing curl"
if [ -n "$missing" ]; then
    echo "installing$missing (Debian packages)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing >/dev/null
fi
VENV=.venv-serve
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r scripts/requirements-serve.txt
cargo build --release --quiet -p silica
BIN=target/release/silica

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
P1=$(free_port); P2=$(free_port); PLB=$(free_port); PPROM=$(free_port)
PIDS=()
cleanup() { for p in "${PIDS[@]}" ${R1:-} ${R2:-}; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# A replica on PORT, its pid in the variable VAR (started from this shell, so `wait` can read
# its exit status).
start_replica() { # port, log, var
    "$BIN" serve --preset silica-tiny --max-context 256 --port "$1" --drain-timeout "$DRAIN_TIMEOUT" \
        --log-format json >>"$2" 2>&1 &
    printf -v "$3" '%s' $!
}
wait_ready() { # port
    for _ in $(seq 1 300); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/health")" = 200 ] && return 0
        sleep 0.1
    done
    echo "replica on $1 never became ready" >&2; exit 1
}
start_replica "$P1" "$WORK/r1.log" R1; start_replica "$P2" "$WORK/r2.log" R2
wait_ready "$P1"; wait_ready "$P2"

cat >"$WORK/haproxy.cfg" <<CFG
global
    log stderr format raw local0 info
defaults
    mode http
    log global
    option httplog
    timeout connect 1s
    timeout client 60s
    timeout server 60s
    # A refused connection (a replica that stopped listening), a connection closed without a
    # response (a keep-alive connection the draining replica closed), or a 503 (it refused
    # new work while draining) is retried on the other replica. POST bodies are buffered so
    # they can be resent.
    option http-buffer-request
    retries 3
    retry-on conn-failure empty-response 503
    option redispatch 1
frontend api
    bind 127.0.0.1:$PLB
    default_backend silica
backend silica
    balance leastconn
    option httpchk GET /health
    http-check expect status 200
    default-server inter 200ms fall 1 rise 2
    server r1 127.0.0.1:$P1 check
    server r2 127.0.0.1:$P2 check
CFG
haproxy -c -f "$WORK/haproxy.cfg" >/dev/null
haproxy -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 & PIDS+=($!)

cat >"$WORK/prometheus.yml" <<CFG
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: silica
    static_configs:
      - targets: ["127.0.0.1:$P1", "127.0.0.1:$P2"]
CFG
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/tsdb" \
    --web.listen-address="127.0.0.1:$PPROM" >"$WORK/prometheus.log" 2>&1 & PIDS+=($!)

for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$PLB/v1/models" >/dev/null && break; sleep 0.1
done

STOP="$WORK/stop"
"$VENV/bin/python" scripts/deploy_load.py --url "http://127.0.0.1:$PLB" --model silica-tiny \
    --concurrency 8 --stop "$STOP" >"$WORK/load.json" & LOAD=$!
sleep "$PHASE"

# Restart one replica: SIGTERM, time the drain until it exits, start it again, wait until
# ready, let the load run on both again.
restart() { # name, pid var, port, log
    local pid=${!2} t0 t1
    local busy; busy=$(curl -s "http://127.0.0.1:$3/health" | python3 -c 'import json,sys; print(json.load(sys.stdin)["running"])')
    t0=$(date +%s.%N)
    kill -TERM "$pid"
    wait "$pid" || { echo "$1 exited non-zero after SIGTERM" >&2; tail "$4"; exit 1; }
    t1=$(date +%s.%N)
    DRAIN=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}')
    local said; said=$(grep -o 'drained in [0-9.]* s' "$4" | tail -1)
    echo "$1: SIGTERM with $busy requests running → exit in $DRAIN s ($said)"
    start_replica "$3" "$4" "$2"
    wait_ready "$3"
    echo "$1: restarted and ready"
    sleep "$PHASE"
}
restart r1 R1 "$P1" "$WORK/r1.log"
restart r2 R2 "$P2" "$WORK/r2.log"
touch "$STOP"
wait "$LOAD"
cat "$WORK/load.json"
python3 - "$WORK/load.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"load: {s['requests']} requests in {s['seconds']} s, {s['failed']} failed, "
      f"{s['tokens']} tokens received")
assert s["requests"] > 50, "too little load to mean anything"
assert s["failed"] == 0, "\n".join(s["errors"])
PY
grep -c '"path":"/v1/' "$WORK/r1.log" "$WORK/r2.log" | sed 's/^/access-log lines: /'
# Requests HAProxy sent to a replica that had just stopped listening, and resent to the other.
awk '$4 ~ /^silica\// {split($11, c, "/"); if (c[5] + 0 > 0) n++} END {print "haproxy: " n + 0 " requests retried on the other replica"}' \
    "$WORK/haproxy.log"

# Prometheus: the vllm:* series of both replicas, read back through its HTTP API.
sleep 2
python3 - "http://127.0.0.1:$PPROM" "$P1" "$P2" <<'PY'
import json, sys, time, urllib.parse, urllib.request
base, p1, p2 = sys.argv[1], sys.argv[2], sys.argv[3]
def query(q):
    u = base + "/api/v1/query?" + urllib.parse.urlencode({"query": q})
    return json.load(urllib.request.urlopen(u))["data"]["result"]
want = ["vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
        "vllm:generation_tokens_total", "vllm:prompt_tokens_total",
        "vllm:time_to_first_token_seconds_count", "vllm:e2e_request_latency_seconds_count",
        "vllm:inter_token_latency_seconds_count", "vllm:request_queue_time_seconds_count",
        "vllm:num_preemptions_total", "vllm:prefix_cache_queries_total",
        "vllm:request_success_total"]
for _ in range(30):
    r = query('count by (instance) (vllm:generation_tokens_total{model_name="silica-tiny"})')
    if len(r) == 2:
        break
    time.sleep(1)
for name in want:
    r = query(f'{name}{{model_name="silica-tiny"}}')
    inst = {x["metric"]["instance"] for x in r}
    assert inst == {f"127.0.0.1:{p1}", f"127.0.0.1:{p2}"}, (name, r)
gen = query('sum(vllm:generation_tokens_total{model_name="silica-tiny"})')[0]["value"][1]
p50 = query('histogram_quantile(0.5, sum by (le) (vllm:time_to_first_token_seconds_bucket))')
print(f"prometheus: {len(want)} vllm:* series from both replicas; generation tokens since the "
      f"restarts {float(gen):.0f}; TTFT p50 {float(p50[0]['value'][1]) * 1e3:.1f} ms")
PY
echo "deploy check: OK"
