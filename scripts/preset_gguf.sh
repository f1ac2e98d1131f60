#!/usr/bin/env bash
# A random-weight checkpoint of a silica preset (default llama-3.2-1b) in both tools' formats,
# for scripts/bench-vs-llamacpp.sh's preset rows (there is no real Llama-3.2-1B checkpoint here):
#
#   OUT/hf-bf16/        scripts/preset_checkpoint.py: transformers' initialisation, seed 0,
#                       bf16, SmolLM2's tokenizer (the preset names none)
#   OUT/f32.gguf        convert_hf_to_gguf.py OUT/hf-bf16 --outtype f32 (the same values)
#   OUT/bf16.gguf       convert_hf_to_gguf.py OUT/hf-bf16 --outtype bf16
#   OUT/Q8_0.gguf       llama-quantize OUT/f32.gguf Q8_0
#
#   bash scripts/preset_gguf.sh [PRESET]     # make what is missing or stale (idempotent)
#
# About 10 GB of disk for the 1B preset; OUT is target/preset-ref/PRESET.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PRESET="${1:-llama-3.2-1b}"
VENV="${GGUF_VENV:-$ROOT/.venv-gguf}"
OUT="$ROOT/target/preset-ref/$PRESET"
BIN="$ROOT/target/llamacpp/bin"
TOKENIZER="$ROOT/target/gguf-ref/smollm2-135m/hf-f32"
if [ ! -f "$ROOT/models/presets/$PRESET.json" ]; then
  echo "unknown preset '$PRESET': expected one of $(ls "$ROOT/models/presets" | sed -n 's/\.json$//p' | tr '\n' ' ')" >&2
  exit 2
fi

# The tokenizer's folder and the llama.cpp build; both return at once when up to date.
bash "$ROOT/scripts/gguf_reference.sh"
bash "$ROOT/scripts/llamacpp.sh"
CONVERT="$(ls "$ROOT"/target/llamacpp/src/llama_cpp_python-*/vendor/llama.cpp/convert_hf_to_gguf.py | head -n 1)"

mkdir -p "$OUT"
STAMP="$OUT/.stamp.sha256"
WANT="$(cat "$ROOT/models/presets/$PRESET.json" "$ROOT/scripts/preset_checkpoint.py" \
  "$BIN/.build-stamp" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  rm -rf "$STAMP" "$OUT/hf-bf16" "$OUT"/*.gguf
fi

if [ ! -d "$OUT/hf-bf16" ]; then
  echo "== $PRESET: random bf16 checkpoint -> $OUT/hf-bf16" >&2
  HF_HUB_OFFLINE=1 nice -n 19 "$VENV/bin/python" "$ROOT/scripts/preset_checkpoint.py" \
    --preset "$ROOT/models/presets/$PRESET.json" --tokenizer-from "$TOKENIZER" --out "$OUT/hf-bf16" >&2
fi
# Each file is written under a temporary name and renamed when complete.
for outtype in f32 bf16; do
  f="$OUT/$outtype.gguf"
  [ -f "$f" ] && continue
  echo "== convert_hf_to_gguf.py --outtype $outtype -> $f" >&2
  HF_HUB_OFFLINE=1 nice -n 19 "$VENV/bin/python" "$CONVERT" "$OUT/hf-bf16" --outtype "$outtype" \
    --outfile "$f.tmp" > "$OUT/convert-$outtype.log" 2>&1 || { tail -30 "$OUT/convert-$outtype.log"; exit 1; }
  mv "$f.tmp" "$f"
done
if [ ! -f "$OUT/Q8_0.gguf" ]; then
  echo "== llama-quantize Q8_0 -> $OUT/Q8_0.gguf" >&2
  nice -n 19 "$BIN/llama-quantize" "$OUT/f32.gguf" "$OUT/Q8_0.gguf.tmp" Q8_0 \
    > "$OUT/quantize-Q8_0.log" 2>&1 || { tail -30 "$OUT/quantize-Q8_0.log"; exit 1; }
  mv "$OUT/Q8_0.gguf.tmp" "$OUT/Q8_0.gguf"
fi
echo "$WANT" > "$STAMP"
