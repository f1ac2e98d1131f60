#!/usr/bin/env bash
# Runs silica's standard benchmark matrix (models × batch × lengths) on whatever this machine is,
# and writes every report plus one combined table (matrix.md, matrix.html) to one folder.
#
#   bash scripts/bench-matrix.sh [OUT_DIR]
#
# The backend is chosen from what is here: NeuronCores (/dev/neuron*) → neuron, an NVIDIA GPU
# (nvidia-smi) → pjrt, else cpu. Override anything with environment variables:
#   SILICA_BACKEND   cpu | neuron | pjrt
#   MODELS           space-separated preset names or model folders
#                    (default: cpu → "silica-tiny qwen2.5-0.5b"; accelerators → "llama-3.2-1b llama-3.1-8b")
#   BATCHES          default "1 4" on cpu, "1 8 32" on accelerators
#   LENGTHS          INPUTxOUTPUT pairs, default "128x128 512x128" (cpu: "128x128")
#   DTYPE            default f32 on cpu, bf16 on accelerators
#   TP               tensor-parallel degrees, default "2" on neuron (Llama-3.1-8B in bf16 does not
#                    fit one 16 GiB NeuronCore; every Inf2/Trn1 instance has at least 2), else "1"
#   NUM_REQUESTS     default 4 × batch (at least 8)
#   SILICA           a silica binary (default: build target/release/silica)
#   EXTRA_ARGS       passed to every `silica bench` (e.g. "--instance inf2.xlarge")
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-bench-results/$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$out"

if [ -z "${SILICA:-}" ]; then
    (cd "$root" && cargo build --release --quiet -p silica)
    SILICA="${CARGO_TARGET_DIR:-$root/target}/release/silica"
fi

backend="${SILICA_BACKEND:-}"
if [ -z "$backend" ]; then
    if compgen -G "/dev/neuron*" > /dev/null; then
        backend=neuron
    elif command -v nvidia-smi > /dev/null && nvidia-smi -L > /dev/null 2>&1; then
        backend=pjrt
    else
        backend=cpu
    fi
fi
if [ "$backend" = cpu ]; then
    models="${MODELS:-silica-tiny qwen2.5-0.5b}"
    batches="${BATCHES:-1 4}"
    lengths="${LENGTHS:-128x128}"
    dtype="${DTYPE:-f32}"
else
    models="${MODELS:-llama-3.2-1b llama-3.1-8b}"
    batches="${BATCHES:-1 8 32}"
    lengths="${LENGTHS:-128x128 512x128}"
    dtype="${DTYPE:-bf16}"
fi
if [ "$backend" = neuron ]; then tps="${TP:-2}"; else tps="${TP:-1}"; fi
echo "bench-matrix: backend $backend, dtype $dtype, tp [$tps], models [$models], batches [$batches], lengths [$lengths] → $out"
"$SILICA" doctor > "$out/doctor.txt" 2>&1 || true

reports=()
failed=0
for model in $models; do
    if [ -d "$model" ]; then src=(--model "$model"); tag="$(basename "$model")"; else src=(--preset "$model"); tag="$model"; fi
    for tp in $tps; do
    for b in $batches; do
        for len in $lengths; do
            in="${len%x*}"; outl="${len#*x}"
            n="${NUM_REQUESTS:-$(( b * 4 > 8 ? b * 4 : 8 ))}"
            file="$out/${tag}_${backend}_tp${tp}_${dtype}_b${b}_${in}x${outl}.json"
            echo "== $tag tp $tp, batch $b, $in+$outl tokens, $n requests"
            # shellcheck disable=SC2086
            if "$SILICA" bench "${src[@]}" --backend "$backend" --dtype "$dtype" --tp "$tp" --batch "$b" \
                --input-len "$in" --output-len "$outl" --num-requests "$n" --out "$file" ${EXTRA_ARGS:-} \
                > "${file%.json}.log" 2>&1; then
                reports+=("$file")
            else
                failed=$((failed + 1))
                echo "   failed; see ${file%.json}.log:"
                tail -3 "${file%.json}.log" | sed 's/^/   /'
            fi
        done
    done
    done
done
if [ "${#reports[@]}" -gt 0 ]; then
    "$SILICA" report "${reports[@]}" --format md --out "$out/matrix.md"
    "$SILICA" report "${reports[@]}" --format html --out "$out/matrix.html"
    cat "$out/matrix.md"
fi
echo "bench-matrix: ${#reports[@]} runs written to $out, $failed failed"
[ "$failed" -eq 0 ]
