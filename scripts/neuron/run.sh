#!/usr/bin/env bash
# One command on a fresh Inf2 / Trn1 / Trn2 instance (Neuron DLAMI or plain Ubuntu 22.04/24.04):
# installs the Neuron driver, runtime and compiler from AWS's Neuron repositories (when missing),
# builds silica, checks the machine with `silica doctor`, compiles a model to NEFFs and runs the
# bench matrix, writing every report under $OUT.
#
#   bash scripts/neuron/run.sh                       # everything, default matrix
#   MODEL=/path/to/hf-folder bash scripts/neuron/run.sh
#   SKIP_INSTALL=1 bash scripts/neuron/run.sh        # the Neuron stack is already installed
#   DRY_RUN=1 bash scripts/neuron/run.sh             # print the steps, change nothing
#
# Environment: OUT (default results/neuron-<instance>-<date>), MODEL (HF folder; default: the
# presets below with random weights), PRESETS ("silica-tiny llama-3.2-1b"), BATCHES ("1 4 8"),
# DTYPES ("bf16"), TPS (tensor-parallel degrees, "1 2": every Inf2/Trn1 instance has 2 or more
# NeuronCores), NEURON_PIP_SPEC (default "neuronx-cc==2.*"), TARGET (inf2|trn1|trn2; default from
# the instance type).
#
# NOTE: written against AWS's documented install steps; it has not been run on Neuron hardware
# yet (see docs/neuron.md, "What has been verified").
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

DRY_RUN="${DRY_RUN:-0}"
run() {
    echo "+ $*" >&2
    if [ "$DRY_RUN" != 1 ]; then "$@"; fi
}
die() { echo "error: $*" >&2; exit 1; }
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

# ---------------------------------------------------------------- instance and target
INSTANCE="$(cat /sys/devices/virtual/dmi/id/product_name 2>/dev/null || true)"
INSTANCE="${SILICA_INSTANCE:-$INSTANCE}"
if [ -z "${TARGET:-}" ]; then
    case "$INSTANCE" in
        inf2.*) TARGET=inf2 ;;
        trn1.* | trn1n.*) TARGET=trn1 ;;
        trn2*) TARGET=trn2 ;;
        *) die "instance type '${INSTANCE:-unknown}' is not Inf2/Trn1/Trn2; set TARGET=inf2|trn1|trn2 to force" ;;
    esac
fi
echo "instance: ${INSTANCE:-unknown}, target: $TARGET" >&2
OUT="${OUT:-results/neuron-${INSTANCE:-$TARGET}-$(date +%Y%m%d-%H%M%S)}"

# ---------------------------------------------------------------- Neuron driver + runtime
have_runtime() { [ -e /opt/aws/neuron/lib/libnrt.so.1 ] || ldconfig -p 2>/dev/null | grep -q 'libnrt\.so'; }
if [ "${SKIP_INSTALL:-0}" != 1 ] && ! have_runtime; then
    [ -r /etc/os-release ] || die "cannot tell the OS; install aws-neuronx-dkms and aws-neuronx-runtime-lib by hand"
    . /etc/os-release
    case "$ID" in
        ubuntu)
            # AWS's Neuron apt repository (signed-by keyring instead of the deprecated apt-key).
            run $SUDO install -d -m 0755 /etc/apt/keyrings
            run bash -c "curl -fsSL https://apt.repos.neuron.amazonaws.com/GPG-PUB-KEY-AMAZON-AWS-NEURON.PUB | $SUDO gpg --dearmor --yes -o /etc/apt/keyrings/neuron.gpg"
            run bash -c "echo 'deb [signed-by=/etc/apt/keyrings/neuron.gpg] https://apt.repos.neuron.amazonaws.com ${VERSION_CODENAME} main' | $SUDO tee /etc/apt/sources.list.d/neuron.list"
            run $SUDO apt-get update -y
            run $SUDO apt-get install -y "linux-headers-$(uname -r)" git build-essential pkg-config python3-venv
            run $SUDO apt-get install -y aws-neuronx-dkms aws-neuronx-runtime-lib aws-neuronx-collectives aws-neuronx-tools
            ;;
        amzn)
            run bash -c "printf '[neuron]\nname=Neuron YUM Repository\nbaseurl=https://yum.repos.neuron.amazonaws.com\nenabled=1\nmetadata_expire=0\n' | $SUDO tee /etc/yum.repos.d/neuron.repo"
            run $SUDO rpm --import https://yum.repos.neuron.amazonaws.com/GPG-PUB-KEY-AMAZON-AWS-NEURON.PUB
            run $SUDO dnf install -y "kernel-devel-$(uname -r)" "kernel-headers-$(uname -r)" git gcc python3
            run $SUDO dnf install -y aws-neuronx-dkms aws-neuronx-runtime-lib aws-neuronx-collectives aws-neuronx-tools
            ;;
        *) die "unsupported OS '$ID': install aws-neuronx-dkms and aws-neuronx-runtime-lib from AWS's Neuron repository" ;;
    esac
fi
export PATH="/opt/aws/neuron/bin:$PATH"

# ---------------------------------------------------------------- neuronx-cc (HLO -> NEFF)
# The DLAMI ships it in a framework venv; otherwise it goes into its own venv from AWS's pip
# repository. silica only runs it as a subprocess: no Python is needed when NEFFs are cached.
find_cc() {
    command -v neuronx-cc 2>/dev/null && return 0
    ls /opt/aws_neuronx_venv_*/bin/neuronx-cc 2>/dev/null | head -n1
}
CC="$(find_cc || true)"
if [ -z "$CC" ] && [ "${SKIP_INSTALL:-0}" != 1 ]; then
    VENV="$ROOT/.venv-neuronx-cc"
    run python3 -m venv "$VENV"
    run "$VENV/bin/pip" install --upgrade pip
    run "$VENV/bin/pip" install --extra-index-url https://pip.repos.neuron.amazonaws.com "${NEURON_PIP_SPEC:-neuronx-cc==2.*}"
    CC="$VENV/bin/neuronx-cc"
fi
[ -n "$CC" ] || [ "$DRY_RUN" = 1 ] || die "neuronx-cc not found and SKIP_INSTALL=1"
export SILICA_NEURONX_CC="$CC"
[ -z "$CC" ] || export PATH="$(dirname "$CC"):$PATH"

# ---------------------------------------------------------------- build silica
if ! command -v cargo >/dev/null; then
    run bash -c "curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal"
    # shellcheck disable=SC1091
    [ "$DRY_RUN" = 1 ] || . "$HOME/.cargo/env"
fi
run cargo build --release
SILICA="$ROOT/target/release/silica"

# ---------------------------------------------------------------- check, compile, bench
run mkdir -p "$OUT"
export SILICA_NEURON_TARGET="$TARGET"
export SILICA_NEFF_CACHE="${SILICA_NEFF_CACHE:-$HOME/.cache/silica/neff}"
run bash -c "'$SILICA' doctor | tee '$OUT/doctor.txt'"
run bash -c "'$SILICA' doctor --json > '$OUT/doctor.json'"
if [ "$DRY_RUN" != 1 ] && ! grep -q '^neuron: available' "$OUT/doctor.txt"; then
    die "silica doctor says the neuron backend cannot run here (see $OUT/doctor.txt)"
fi
if [ "$DRY_RUN" != 1 ]; then
    { neuron-ls 2>&1 || true; } > "$OUT/neuron-ls.txt"
    { "$CC" --version 2>&1 || true; } > "$OUT/neuronx-cc-version.txt"
fi

PRESETS="${PRESETS:-silica-tiny llama-3.2-1b}"
BATCHES="${BATCHES:-1 4 8}"
DTYPES="${DTYPES:-bf16}"
# Smoke test first: the embedded tiny model compiles (HLO -> neuronx-cc -> NEFF cache, with
# progress), loads on NeuronCore 0 and runs; a broken stack fails here in minutes, not hours.
run "$SILICA" bench --backend neuron --quick --out "$OUT/smoke.json"
if [ -n "${MODEL:-}" ]; then
    SOURCES=("--model=$MODEL")
else
    SOURCES=()
    for p in $PRESETS; do SOURCES+=("--preset=$p"); done
fi
REPORTS=()
for src in "${SOURCES[@]}"; do
    name="$(basename "${src#*=}")"
    for dt in $DTYPES; do
        for tp in ${TPS:-1 2}; do
            for b in $BATCHES; do
                r="$OUT/bench-$name-$dt-tp$tp-b$b.json"
                # The first run of each shape compiles its NEFFs into $SILICA_NEFF_CACHE (minutes
                # to hours for large models); reruns and later shapes sharing programs hit the cache.
                run "$SILICA" bench "$src" --backend neuron --dtype "$dt" --tp "$tp" --batch "$b" --out "$r"
                REPORTS+=("$r")
            done
        done
    done
done
run "$SILICA" report "${REPORTS[@]}" --format md --out "$OUT/report.md"
echo "done: reports in $OUT" >&2
