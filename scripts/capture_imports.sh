#!/usr/bin/env bash
# Runs the real AIPerf and GuideLLM against `silica serve` (models/default, the trained checkpoint
# in the repo) and checks silica's importers on what they wrote:
#   - `silica report` reads AIPerf's profile_export_aiperf.json and GuideLLM's benchmarks.json;
#   - the imported completed-request count and token totals equal what the server itself counted
#     in the same run (its vllm:request_success_total, vllm:prompt_tokens_total and
#     vllm:generation_tokens_total counters, read before and after each tool);
#   - the imported rows are written back in vLLM's --save-result shape (`--format vllm`).
# With --update, the files the tools wrote are copied into crates/bench/tests/data/ (the unit
# tests pin values from those copies). Not in CI: the two tools' virtual environments are ~3 GB
# (GuideLLM pulls torch) and a few minutes to install.
#
# Usage: scripts/capture_imports.sh [--update]
set -euo pipefail
cd "$(dirname "$0")/.."
UPDATE=0
[ "${1:-}" = "--update" ] && UPDATE=1
WORK=target/import-capture
rm -rf "$WORK"; mkdir -p "$WORK"

for tool in aiperf guidellm; do
    venv=.venv-$tool
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "scripts/requirements-$tool.txt"
done
cargo build --release --quiet -p silica
BIN="${CARGO_TARGET_DIR:-target}/release/silica"
MODEL=models/default
NAME=silica-default

PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT
"$BIN" serve --model "$MODEL" --served-model-name "$NAME" --port 0 --log-format off \
    >"$WORK/server.log" 2>&1 &
PID=$!
URL=""
for _ in $(seq 1 600); do
    URL=$(sed -n 's/.*ready on \(http:\/\/[^ ]*\).*/\1/p' "$WORK/server.log" | head -1)
    [ -n "$URL" ] && break
    kill -0 "$PID" 2>/dev/null || { cat "$WORK/server.log"; exit 1; }
    sleep 0.1
done
[ -n "$URL" ] || { echo "silica serve did not become ready" >&2; exit 1; }
echo "silica serve: $URL"

# Σ of a counter over its label sets, from the server's /metrics.
counter() { curl -s "$URL/metrics" | awk -v n="$1" '$1 ~ "^"n"({|$)" {s += $2} END {printf "%d", s}'; }
snapshot() { echo "$(counter vllm:request_success_total) $(counter vllm:prompt_tokens_total) $(counter vllm:generation_tokens_total)"; }

# AIPerf: completions, streamed, 4 concurrent, 24 requests of 64 prompt / 32 output tokens
# (ignore_eos keeps every output at 32), token counts from the server's usage (its default
# re-tokenizes the output text, which need not give the server's count back).
before=$(snapshot)
.venv-aiperf/bin/aiperf profile --model "$NAME" --url "$URL" --endpoint-type completions \
    --streaming --tokenizer "$MODEL" --use-server-token-count --concurrency 4 --request-count 24 \
    --prompt-input-tokens-mean 64 --prompt-input-tokens-stddev 0 \
    --prompt-output-tokens-mean 32 --prompt-output-tokens-stddev 0 \
    --extra-inputs ignore_eos:true --random-seed 7 --output-artifact-dir "$WORK/aiperf" \
    --no-auto-plot >"$WORK/aiperf.log" 2>&1 || { tail -40 "$WORK/aiperf.log"; exit 1; }
after=$(snapshot)
echo "$before $after" >"$WORK/aiperf.counters"
AIPERF_JSON=$(find "$WORK/aiperf" -name profile_export_aiperf.json | head -1)
[ -n "$AIPERF_JSON" ] || { echo "AIPerf wrote no profile_export_aiperf.json" >&2; ls -R "$WORK/aiperf"; exit 1; }

# GuideLLM: completions (models/default has no chat template, and chat requests get 400), 1 and
# then 4 concurrent streams, 24 requests each, same shape of requests (GuideLLM sends ignore_eos);
# full data kept for 2 requests per status (the summaries cover all), to keep the file small.
before=$(snapshot)
.venv-guidellm/bin/guidellm run \
    --backend "kind=openai_http,target=$URL,model=$NAME,request_format=/v1/completions" \
    --profile kind=concurrent --override profile.streams 1,4 \
    --constraint kind=max_requests,count=24 \
    --data kind=synthetic_text,prompt_tokens=64,output_tokens=32 \
    --tokenizer "kind=huggingface_auto,model=$PWD/$MODEL" --metrics kind=generative,sample_size=2 \
    --output "kind=json,path=$WORK/guidellm/benchmarks.json" \
    --disable-console-interactive >"$WORK/guidellm.log" 2>&1 || { tail -40 "$WORK/guidellm.log"; exit 1; }
after=$(snapshot)
echo "$before $after" >"$WORK/guidellm.counters"
GUIDELLM_JSON=$WORK/guidellm/benchmarks.json

"$BIN" report "$AIPERF_JSON" "$GUIDELLM_JSON" --out "$WORK/report.md"
"$BIN" report "$AIPERF_JSON" "$GUIDELLM_JSON" --format vllm --out "$WORK/vllm.jsonl"
cat "$WORK/report.md"

python3 - "$WORK" <<'PY'
import json, sys
work = sys.argv[1]
rows = [json.loads(l) for l in open(f"{work}/vllm.jsonl")]
by_source = {}
for r in rows:
    by_source.setdefault(r["silica"]["source"], []).append(r)
failed = False
for tool in ("aiperf", "guidellm"):
    b = [int(x) for x in open(f"{work}/{tool}.counters").read().split()]
    server = {"completed": b[3] - b[0], "total_input_tokens": b[4] - b[1], "total_output_tokens": b[5] - b[2]}
    got = {k: sum(r.get(k, 0) for r in by_source.get(tool, [])) for k in server}
    ok = got == server
    failed |= not ok
    print(f"{tool}: imported {got} | server counted {server} | {'OK' if ok else 'MISMATCH'}")
    for r in by_source.get(tool, []):
        print(f"  concurrency {r.get('max_concurrency')}: {r.get('output_throughput', 0):.1f} tok/s, "
              f"TTFT p50 {r.get('median_ttft_ms', float('nan')):.1f} ms, TPOT p50 {r.get('median_tpot_ms', float('nan')):.2f} ms")
sys.exit(1 if failed else 0)
PY

if [ "$UPDATE" = 1 ]; then
    cp "$AIPERF_JSON" crates/bench/tests/data/aiperf_profile_export_aiperf.json
    cp "$GUIDELLM_JSON" crates/bench/tests/data/guidellm_benchmarks.json
    echo "copied into crates/bench/tests/data/"
fi
