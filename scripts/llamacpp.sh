#!/usr/bin/env bash
# Builds llama.cpp's command-line tools (the outside reference for GGUF loading, quantization,
# speed and perplexity) from the llama.cpp source that the llama-cpp-python sdist on PyPI vendors
# under vendor/llama.cpp: PyPI is the one source registry reachable here, and the sdist's version
# pins the llama.cpp commit.
#
#   bash scripts/llamacpp.sh            # download, configure, build, install to target/llamacpp/bin
#   bash scripts/llamacpp.sh --force    # rebuild even if the stamp matches
#
# Idempotent: skips everything when target/llamacpp/bin/.build-stamp matches the pinned version,
# the ISA flags chosen for this CPU and this script. CMake comes from .venv-gguf (PyPI `cmake`,
# via scripts/gguf_reference.sh --setup), which is also the venv that runs the sdist's
# convert_hf_to_gguf.py (see scripts/make_gguf_variants.sh).
#
# Installed tools (all CPU-only, statically linked against libllama/libggml):
#   llama-bench        speed:        llama-bench -m F.gguf -t 2 -p 64 -n 64 -r 2
#   llama-completion   greedy text:  llama-completion -m F.gguf -p "prompt" -n 32 --temp 0 -no-cnv -t 2
#   llama-simple       greedy text:  llama-simple -m F.gguf -n 32 "prompt"  (greedy sampler only)
#   llama-debug        logits:       llama-debug -m F.gguf -p "prompt" --save-logits --logits-output-dir DIR
#   llama-eval-callback  every intermediate tensor of one forward pass (prints to stderr)
#   llama-tokenize     token ids:    llama-tokenize -m F.gguf -p "text" --ids --log-disable
#   llama-quantize     llama-quantize F32.gguf OUT.gguf Q4_K_M
#   llama-perplexity   llama-perplexity -m F.gguf -f corpus.txt -c 512 --chunks 4 -t 2
# (llama-cli is the interactive chat front end, built only with the server/web-UI tree: not here.)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"  # llama-cpp-python sdist = llama.cpp commit pin
DIR="$ROOT/target/llamacpp"
SRC="$DIR/src/llama_cpp_python-$VERSION/vendor/llama.cpp"
BUILD="$DIR/build-$VERSION"
BIN="$DIR/bin"
VENV="${GGUF_VENV:-$ROOT/.venv-gguf}"
TARGETS=(llama-bench llama-completion llama-simple llama-debug llama-eval-callback llama-tokenize
         llama-quantize llama-perplexity)

force=0
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

# Explicit ISA flags instead of GGML_NATIVE (-march=native): the binaries must not depend on
# whatever the compiler guesses, and -march=native would also switch on AMX, whose quantized
# paths crashed llama.cpp on an AMX host here. So AMX stays off even where the CPU has it.
# AVX2/FMA/F16C/BMI2 are the baseline; AVX-512 is used only when the CPU reports every subset
# GGML_AVX512 compiles for (F, CD, VL, DQ, BW), VNNI and BF16 each only when reported.
has() { grep -qw "$1" /proc/cpuinfo; }
ISA=(-DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF)
for f in avx avx2 fma f16c bmi2; do
  has "$f" || { echo "this CPU lacks $f, which these flags assume" >&2; exit 1; }
done
ISA+=(-DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON)
if has avx512f && has avx512cd && has avx512vl && has avx512dq && has avx512bw; then
  ISA+=(-DGGML_AVX512=ON)
  has avx512_vnni && ISA+=(-DGGML_AVX512_VNNI=ON) || ISA+=(-DGGML_AVX512_VNNI=OFF)
  has avx512_bf16 && ISA+=(-DGGML_AVX512_BF16=ON) || ISA+=(-DGGML_AVX512_BF16=OFF)
else
  ISA+=(-DGGML_AVX512=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF)
fi
# Everything that is not the CPU tools stays off: no GPU backends, no tests, no server (and so
# no web UI, whose prebuilt copy would be fetched from a model hub), no HTTPS (nothing is
# downloaded by these tools here), static libraries so bin/ is self-contained.
CONFIG=(-DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DGGML_CCACHE=OFF -DGGML_OPENMP=ON
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF
        -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_EXAMPLES=ON
        -DLLAMA_BUILD_TOOLS=ON "${ISA[@]}")

STAMP="$BIN/.build-stamp"
WANT="$( { echo "llama-cpp-python==$VERSION"; printf '%s\n' "${CONFIG[@]}" "${TARGETS[@]}"; } \
  | sha256sum | cut -d' ' -f1)"
if [ "$force" = 0 ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  echo "== llama.cpp tools up to date in $BIN (llama-cpp-python $VERSION)"
  exit 0
fi

bash "$ROOT/scripts/gguf_reference.sh" --setup  # .venv-gguf with cmake
CMAKE="$VENV/bin/cmake"

mkdir -p "$DIR/src"
if [ ! -f "$SRC/CMakeLists.txt" ]; then
  SDIST="$DIR/llama_cpp_python-$VERSION.tar.gz"
  if [ ! -f "$SDIST" ]; then
    echo "== downloading the llama-cpp-python $VERSION sdist"
    # --no-binary only for this package: with :all: pip would also compile the build backend's
    # own dependencies (cmake, ninja) from source just to read the sdist's metadata.
    nice -n 19 "$VENV/bin/python" -m pip download --quiet --disable-pip-version-check \
      --no-deps --no-binary llama-cpp-python "llama-cpp-python==$VERSION" -d "$DIR"
  fi
  echo "== extracting $SDIST"
  tar -xzf "$SDIST" -C "$DIR/src"
fi

echo "== configuring llama.cpp ($(printf '%s ' "${ISA[@]}"))"
nice -n 19 "$CMAKE" -S "$SRC" -B "$BUILD" "${CONFIG[@]}" > "$DIR/configure.log" 2>&1 \
  || { tail -40 "$DIR/configure.log"; exit 1; }
echo "== building ${TARGETS[*]} (-j2; log: $DIR/build.log)"
start=$SECONDS
nice -n 19 "$CMAKE" --build "$BUILD" --config Release -j2 --target "${TARGETS[@]}" > "$DIR/build.log" 2>&1 \
  || { tail -40 "$DIR/build.log"; exit 1; }
echo "   built in $((SECONDS - start)) s"

mkdir -p "$BIN"
for t in "${TARGETS[@]}"; do
  install -m 755 "$BUILD/bin/$t" "$BIN/$t"
done
# Record which llama.cpp this is (the sdist vendors a commit; llama-bench reports it too).
"$BIN/llama-completion" --version 2>&1 | head -n 3 | tee "$BIN/VERSION" || true
echo "llama-cpp-python==$VERSION" >> "$BIN/VERSION"
printf '%s\n' "${ISA[@]}" >> "$BIN/VERSION"
echo "$WANT" > "$STAMP"
echo "== installed to $BIN: ${TARGETS[*]}"
