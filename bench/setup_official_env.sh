#!/usr/bin/env bash
# Create bench/.venv-official: the official llm2vec 0.2.3 with the stack it
# needs (transformers 4.44.2, tokenizers 0.19.1, huggingface_hub 0.24.6,
# peft 0.12.0) on torch 2.13.0 (the CPU wheel on this machine's disk).
#
# Usage: bash bench/setup_official_env.sh [--force]
# Idempotent: does nothing when the venv exists and imports llm2vec with the
# pinned versions. --force rebuilds it from scratch.
# Environment: PYTHON (default python3.11), VENV (default bench/.venv-official).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${VENV:-$here/.venv-official}"
PYTHON="${PYTHON:-python3.11}"

check() {
    "$VENV/bin/python" - <<'EOF' 2>/dev/null
import importlib.metadata as md
import llm2vec  # noqa: F401  (fails on a wrong transformers)
want = {"torch": "2.13.0", "transformers": "4.44.2", "tokenizers": "0.19.1",
        "huggingface-hub": "0.24.6", "peft": "0.12.0", "llm2vec": "0.2.3"}
for name, ver in want.items():
    got = md.version(name)
    if got.split("+")[0] != ver:
        raise SystemExit(f"{name} {got} != {ver}")
EOF
}

if [[ "${1:-}" == "--force" ]]; then
    rm -rf "$VENV"
elif [[ -x "$VENV/bin/python" ]] && check; then
    echo "official env ready: $VENV"
    exit 0
fi

start=$(date +%s)
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)

# Every later install is held to this torch, so pip never swaps it for another.
constraints="$VENV/official-constraints.txt"
cat >"$constraints" <<'EOF'
torch==2.13.0
transformers==4.44.2
tokenizers==0.19.1
huggingface_hub==0.24.6
peft==0.12.0
EOF

# torch first: the exact pin makes pip take the CPU wheel that lies on disk.
"${pip[@]}" -c "$constraints" "torch==2.13.0"
# What llm2vec imports at import time (llm2vec.py, models/*): numpy, torch,
# tqdm, peft, transformers, packaging; peft brings accelerate, psutil, pyyaml.
# sentencepiece and protobuf for slow/SentencePiece tokenizers.
"${pip[@]}" -c "$constraints" \
    "transformers==4.44.2" "tokenizers==0.19.1" "huggingface_hub==0.24.6" \
    "peft==0.12.0" safetensors numpy tqdm packaging sentencepiece protobuf
# llm2vec's own requirements (datasets, evaluate, scikit-learn) are only for
# training/evaluation scripts, not imported by `import llm2vec`.
"${pip[@]}" --no-deps "llm2vec==0.2.3"

check || { echo "official env check failed" >&2; "$VENV/bin/python" -c "import llm2vec"; exit 1; }
echo "official env ready: $VENV ($(( $(date +%s) - start )) s)"
