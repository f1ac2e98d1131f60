#!/usr/bin/env bash
# Starts `silica serve` on the embedded preset (random weights, no download) on a free port and
# drives it with the real `openai` Python client (scripts/serve_openai_check.py): completions,
# chat, streaming, errors, and a load test of 64 concurrent streams with zero failures after
# which the KV blocks in use must be back to 0; then logprobs, echo, n, logit_bias and the
# penalties; then a second server on a models/fixtures folder, whose logprobs must equal
# transformers' log_softmax of its recorded logits within 1e-4. Non-zero exit on any failure.
# Extra arguments go to the Python script (e.g. --bench 1,8,32).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv-serve
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r scripts/requirements-serve.txt

cargo build --release --quiet -p silica
BIN="${CARGO_TARGET_DIR:-target}/release/silica"

LOG=$(mktemp)
KEY="serve-check-$$"
PID=""
cleanup() {
    [ -n "$PID" ] && kill "$PID" 2>/dev/null || true
    [ -n "$PID" ] && wait "$PID" 2>/dev/null || true
    rm -f "$LOG"
}
trap cleanup EXIT

# Starts `silica serve --port 0 --api-key KEY ARGS...` in the background (PID, its log in LOG)
# and waits until it has loaded the model and prints its address (URL); NAME: the served model.
start_server() {
    "$BIN" serve --port 0 --api-key "$KEY" "$@" >"$LOG" 2>&1 &
    PID=$!
    URL=""
    for _ in $(seq 1 600); do
        URL=$(sed -n 's/.*ready on \(http:\/\/[^ ]*\).*/\1/p' "$LOG" | head -1)
        [ -n "$URL" ] && break
        if ! kill -0 "$PID" 2>/dev/null; then
            cat "$LOG"; echo "silica serve $* exited early" >&2; exit 1
        fi
        sleep 0.1
    done
    [ -n "$URL" ] || { cat "$LOG"; echo "silica serve $* did not start" >&2; exit 1; }
    NAME=$(curl -s -H "Authorization: Bearer $KEY" "$URL/v1/models" \
        | "$VENV/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])')
}

# Stops the server with SIGTERM (its graceful shutdown) and waits for it.
stop_server() {
    kill -TERM "$PID"
    wait "$PID"
    PID=""
}

start_server --max-context 512
echo "silica serve at $URL"

# Without the key: 401.
CODE=$(curl -s -o /dev/null -w '%{http_code}' "$URL/v1/models" || true)
[ "$CODE" = "401" ] || { echo "expected 401 without the API key, got $CODE" >&2; exit 1; }

"$VENV/bin/python" scripts/serve_openai_check.py --base-url "$URL" --model silica-tiny --api-key "$KEY" "$@"

# Graceful shutdown: SIGTERM, and the server exits cleanly.
stop_server
grep -q "stopped" "$LOG" || { cat "$LOG"; echo "no clean shutdown" >&2; exit 1; }

# Logprobs against the outside reference: a fixture with transformers' logits on record.
FIXTURE=models/fixtures/llama3-tied
start_server --model "$FIXTURE" --dtype f32
"$VENV/bin/python" scripts/serve_openai_check.py --base-url "$URL" --model "$NAME" --api-key "$KEY" --reference "$FIXTURE"
stop_server

# Tools with real tool-capable templates (scripts/fetch_chat_templates.sh), each on the fixture
# of the same tokenizer family: Qwen2.5's (Hermes), Llama 3.1's (JSON), Mistral Nemo's.
bash scripts/fetch_chat_templates.sh
for pair in qwen2-bias-tied:Qwen-Qwen2.5-7B-Instruct llama3-tied:meta-llama-Llama-3.1-8B-Instruct \
            mistral-headdim-f16:mistralai-Mistral-Nemo-Instruct-2407; do
    TOOLDIR=$(mktemp -d)/"${pair#*:}"
    mkdir -p "$TOOLDIR"
    cp models/fixtures/"${pair%%:*}"/* "$TOOLDIR/"
    cp target/chat-templates/"${pair#*:}".jinja "$TOOLDIR/chat_template.jinja"
    start_server --model "$TOOLDIR" --dtype f32 --max-context 2048
    "$VENV/bin/python" scripts/serve_openai_check.py --base-url "$URL" --model "$NAME" --api-key "$KEY" --tools "$TOOLDIR"
    stop_server
    rm -rf "$(dirname "$TOOLDIR")"
done
trap - EXIT
rm -f "$LOG"
echo "serve_check: ok"
