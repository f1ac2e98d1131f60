#!/usr/bin/env bash
# Regenerate models/fixtures/: tiny random Hugging Face checkpoints and the reference outputs that
# transformers computes for them (logits, greedy tokens, tokenizations, chat templates).
#
#   bash scripts/make_fixtures.sh                 # all cases: generate, then verify in a fresh process
#   bash scripts/make_fixtures.sh --case NAME     # one case (repeatable)
#   bash scripts/make_fixtures.sh --verify        # only re-check the committed fixtures
#
# Idempotent and deterministic: fixed seeds, pinned versions, single-threaded torch; re-running
# rewrites byte-identical files. Needs only PyPI (no model hub access): weights are random and the
# tokenizers are trained locally on an inline corpus.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FIXTURES_VENV:-$ROOT/.venv-fixtures}"
REQ="$ROOT/scripts/requirements-fixtures.txt"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi

# Install only when the pinned requirements changed since the last install.
STAMP="$VENV/.requirements.sha256"
WANT="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "installing pinned packages from $REQ (torch from PyPI is large)"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQ"
  echo "$WANT" > "$STAMP"
fi

export PYTHONHASHSEED=0
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
export TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 HF_HUB_DISABLE_PROGRESS_BARS=1

cd "$ROOT"
verify_only=0
for arg in "$@"; do [ "$arg" = "--verify" ] && verify_only=1; done
if [ "$verify_only" = 0 ]; then
  "$VENV/bin/python" scripts/make_fixtures.py --no-verify "$@"
fi
# Round trip in a fresh process: AutoModelForCausalLM / AutoTokenizer reload every folder and must
# reproduce the recorded references.
args=()
for arg in "$@"; do [ "$arg" != "--verify" ] && args+=("$arg"); done
"$VENV/bin/python" scripts/make_fixtures.py --verify "${args[@]+"${args[@]}"}"

du -sh models/fixtures/*/ | sed 's/^/size: /'
du -sh models/fixtures | sed 's/^/size (total): /'
