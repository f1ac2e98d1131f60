#!/usr/bin/env bash
# Fetches real tool-capable chat templates for the tool-calling checks: the templates llama.cpp
# keeps under models/templates, from the llama-cpp-python sdist on PyPI (the registry reachable
# here; the same sdist scripts/llamacpp.sh builds llama.cpp from, so its version pins them).
# They are the models' own published templates: Qwen2.5-7B-Instruct (Hermes-style <tool_call>),
# Llama-3.1-8B-Instruct (JSON calls, <|python_tag|>), Mistral-Nemo-Instruct-2407 ([TOOL_CALLS]).
# Not committed (each model's license governs its template); written to target/chat-templates.
#
#   bash scripts/fetch_chat_templates.sh          # idempotent
#   SILICA_CHAT_TEMPLATES=target/chat-templates SILICA_REQUIRE_CHAT_TEMPLATES=1 \
#       cargo test -p silica-serve --test tools
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
OUT="$ROOT/target/chat-templates"
NAMES=(Qwen-Qwen2.5-7B-Instruct.jinja meta-llama-Llama-3.1-8B-Instruct.jinja
       mistralai-Mistral-Nemo-Instruct-2407.jinja)

have=1
for n in "${NAMES[@]}"; do [ -s "$OUT/$n" ] || have=0; done
if [ "$have" = 1 ] && [ "$(cat "$OUT/.version" 2>/dev/null)" = "$VERSION" ]; then
    echo "fetch_chat_templates: up to date in $OUT"
    exit 0
fi

mkdir -p "$OUT"
SDIST="$ROOT/target/llamacpp/llama_cpp_python-$VERSION.tar.gz"
if [ ! -f "$SDIST" ]; then
    SDIST_DIR="$ROOT/target/chat-templates/sdist"
    SDIST="$SDIST_DIR/llama_cpp_python-$VERSION.tar.gz"
    if [ ! -f "$SDIST" ]; then
        # `pip download` of an sdist prepares its metadata with the build backend: give it one.
        VENV="$ROOT/target/chat-templates/venv"
        [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "scikit-build-core>=0.9"
        "$VENV/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps \
            --no-binary llama-cpp-python "llama-cpp-python==$VERSION" -d "$SDIST_DIR"
    fi
fi
members=()
for n in "${NAMES[@]}"; do
    members+=("llama_cpp_python-$VERSION/vendor/llama.cpp/models/templates/$n")
done
tar -xzf "$SDIST" -C "$OUT" --strip-components=5 "${members[@]}"
for n in "${NAMES[@]}"; do
    [ -s "$OUT/$n" ] || { echo "fetch_chat_templates: $n missing from the sdist" >&2; exit 1; }
done
echo "$VERSION" > "$OUT/.version"
echo "fetch_chat_templates: ${#NAMES[@]} templates in $OUT"
