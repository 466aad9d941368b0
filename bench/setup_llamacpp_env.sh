#!/usr/bin/env bash
# Create bench/.venv-llamacpp: llama-cpp-python 0.3.36 built from source for this CPU
# (GGML_NATIVE: AVX2/AVX-512 as the machine has them), for bench_vs_official.py --llamacpp.
# About 15 minutes on 2 cores. Idempotent; --force rebuilds.
# Environment: PYTHON (default python3), VENV (default bench/.venv-llamacpp).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${VENV:-$here/.venv-llamacpp}"
PYTHON="${PYTHON:-python3}"

if [[ "${1:-}" == "--force" ]]; then
    rm -rf "$VENV"
elif [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
    echo "llama.cpp env ready: $VENV"
    exit 0
fi
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
CMAKE_ARGS="-DGGML_NATIVE=ON" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "llama-cpp-python==0.3.36"
"$VENV/bin/python" -c "import llama_cpp; print('llama.cpp env ready:', llama_cpp.__version__)"
