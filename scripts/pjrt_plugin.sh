#!/usr/bin/env bash
# Creates .venv-pjrt at the repository root with the pinned PJRT plugin of
# scripts/requirements-pjrt.txt (jax's CUDA 12 plugin), then asks silica where it finds it.
#
#   bash scripts/pjrt_plugin.sh              # plugin only (~175 MB download): enough to load it,
#                                            # which is all the tests need (no GPU)
#   bash scripts/pjrt_plugin.sh --with-cuda  # plus the CUDA runtime wheels (cuBLAS, cuDNN, ...,
#                                            # several GB) that a real GPU run needs
#
# silica finds the plugin in .venv-pjrt by itself; SILICA_PJRT_PLUGIN=/path/to/plugin.so
# overrides the search. Idempotent: does nothing when the venv is current.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.venv-pjrt"
req="$root/scripts/requirements-pjrt.txt"
python="${PYTHON:-python3}"
with_cuda=0
for a in "$@"; do
    case "$a" in
        --with-cuda) with_cuda=1 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "unknown argument: $a (see --help)" >&2; exit 2 ;;
    esac
done

stamp="$venv/.requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)-cuda$with_cuda"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "== creating $venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    # --no-deps: the plugin wheel has no Python dependencies we need; its CUDA libraries are
    # only wanted on GPU machines (below).
    "$venv/bin/python" -m pip install --quiet --no-deps -r "$req"
    if [ "$with_cuda" = 1 ]; then
        # The CUDA runtime wheels jax pins for this plugin version (its `with-cuda` extra). The
        # plugin's RPATH finds them under site-packages/nvidia/*/lib.
        ver="$(sed -n 's/^jax-cuda12-pjrt==//p' "$req")"
        "$venv/bin/python" -m pip install --quiet "jax-cuda12-plugin[with-cuda]==$ver"
    fi
    echo "$want" > "$stamp"
fi
plugin="$(ls "$venv"/lib/python3*/site-packages/jax_plugins/xla_cuda*/xla_cuda_plugin.so | tail -1)"
echo "PJRT plugin: $plugin ($(du -h "$plugin" | cut -f1))"
