#!/usr/bin/env bash
# Creates .venv-hlo at the repository root with the pinned jax of scripts/requirements-hlo.txt and,
# when given case folders, runs scripts/check_hlo.py on them.
#
#   bash scripts/check_hlo.sh              # bootstrap only (idempotent)
#   bash scripts/check_hlo.sh CASES_DIR    # bootstrap, then check every case under CASES_DIR
#
# After bootstrapping, `cargo test -p silica-hlo` finds .venv-hlo/bin/python and executes every
# lowered test program on XLA CPU (set SILICA_REQUIRE_HLO_CHECK=1 to make a missing venv an error).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.venv-hlo"
req="$root/scripts/requirements-hlo.txt"
python="${PYTHON:-python3}"

stamp="$venv/.requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "== creating $venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet -r "$req"
    echo "$want" > "$stamp"
fi
"$venv/bin/python" -c 'import jax, jax.extend.backend as b; print("jax", jax.__version__, "on", b.get_backend("cpu").platform)'

if [ "$#" -gt 0 ]; then
    exec "$venv/bin/python" "$root/scripts/check_hlo.py" "$@"
fi
