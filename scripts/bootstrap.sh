#!/usr/bin/env bash
# Create the project's virtual environment and install everything it needs, every time it
# is missing: torch first (CPU build where there is no NVIDIA GPU, so pip does not pull a
# multi-GB CUDA build onto a laptop), then the package with its dev extras.
set -euo pipefail
VENV=${1:-.venv}
PYTHON=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    "$VENV/bin/python" -m pip install --quiet torch            # CUDA build for GPU machines
  else
    # CPU build. Where pip has no local CPU wheel, set TORCH_INDEX_URL to PyTorch's CPU index.
    "$VENV/bin/python" -m pip install --quiet "torch==${TORCH_VERSION:-2.13.0}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
  fi
fi
"$VENV/bin/python" -m pip install --quiet -e ".[dev]"
touch "$VENV/.installed"
echo "environment ready: $VENV"
