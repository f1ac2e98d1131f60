#!/usr/bin/env bash
# Measures what loading a model of a real size costs: wall time and peak resident memory of
# `silica generate` (load + one prompt of 8 tokens + 1 generated token) on a bf16 checkpoint of a
# preset with random weights (scripts/preset_safetensors.py; numpy from the XLA-check venv).
#
#   bash scripts/load_memory.sh [--preset llama-3.2-1b] [--silica BIN] [--dtype bf16|f32] [--runs 3]
#
# Prints one line per run and the checkpoint size, so peak RSS reads as a multiple of the weights:
# a loader that borrows the memory map holds the file's pages once (≈ 1×); one that copies every
# tensor holds them twice (≈ 2×) at its peak.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
preset=llama-3.2-1b
silica="$root/target/release/silica"
dtype=bf16
runs=3
while [ "$#" -gt 0 ]; do
    case "$1" in
        --preset) preset="$2"; shift 2 ;;
        --silica) silica="$2"; shift 2 ;;
        --dtype) dtype="$2"; shift 2 ;;
        --runs) runs="$2"; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
[ -x "$silica" ] || { echo "no silica binary at $silica (cargo build --release)" >&2; exit 1; }
bash "$root/scripts/check_hlo.sh" > /dev/null
dir="$root/target/load-memory/$preset-bf16"
if [ ! -f "$dir/model.safetensors" ]; then
    "$root/.venv-hlo/bin/python" "$root/scripts/preset_safetensors.py" \
        --preset "$root/models/presets/$preset.json" --out "$dir.partial" --dtype bf16
    rm -rf "$dir"; mv "$dir.partial" "$dir"
fi
bytes=$(stat -c %s "$dir/model.safetensors")
echo "checkpoint: $dir ($((bytes / 1048576)) MiB of bf16 weights), --dtype $dtype, $("$silica" --version)"
# The first run warms the page cache so every run reads the file from memory, not the disk.
cat "$dir/model.safetensors" > /dev/null
for i in $(seq "$runs"); do
    log=$(mktemp)
    /usr/bin/time -f '%e %M' -o "$log.time" "$silica" generate --model "$dir" --dtype "$dtype" \
        --token-ids 1,2,3,4,5,6,7,8 --max-tokens 1 --ignore-eos > "$log" 2>&1 \
        || { cat "$log"; exit 1; }
    read -r wall rss_kb < "$log.time"
    awk -v w="$wall" -v r="$rss_kb" -v b="$bytes" -v i="$i" \
        'BEGIN { printf "run %d: wall %.2f s, peak RSS %.0f MiB = %.2f x the checkpoint\n", i, w, r / 1024, r * 1024 / b }'
    rm -f "$log" "$log.time"
done
