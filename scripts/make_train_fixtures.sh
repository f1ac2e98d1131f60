#!/usr/bin/env bash
# Regenerate models/fixtures/train/: PyTorch AdamW training runs that silica's train step must
# reproduce (per-step losses and final weights). Reuses the pinned .venv-fixtures of
# scripts/make_fixtures.sh (created there if missing). Deterministic: fixed seeds, one thread.
#
#   bash scripts/make_train_fixtures.sh [CASE...]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FIXTURES_VENV:-$ROOT/.venv-fixtures}"
if [ ! -x "$VENV/bin/python" ]; then
  # make_fixtures.sh creates and pins the venv; --verify only re-checks committed fixtures.
  bash "$ROOT/scripts/make_fixtures.sh" --verify
fi
export PYTHONHASHSEED=0 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
cd "$ROOT"
"$VENV/bin/python" scripts/make_train_fixtures.py "$@"
du -sh models/fixtures/train | sed 's/^/size (total): /'
