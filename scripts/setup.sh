#!/usr/bin/env bash
# Creates ./.venv and installs the dependencies (requirements.txt and the extras in requirements-dev.txt); safe to run again (it skips what is done).
# Without a GPU it installs the CPU build torch==2.13.0; with a GPU it keeps the CUDA build of
# torch you installed in the venv, or installs PyPI's default CUDA build if there is none.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate

if ! python -c "import torch" >/dev/null 2>&1; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo "[setup] GPU found: installing a CUDA build of torch (to choose another, install it into .venv first)"
        pip install --quiet "torch>=2.4"
    else
        echo "[setup] no GPU: installing the CPU build of torch 2.13.0"
        pip install --quiet torch==2.13.0 \
            || pip install --quiet torch --index-url https://download.pytorch.org/whl/cpu
    fi
fi

stamp=.venv/.requirements.sha256
want=$(cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "[setup] installing requirements"
    pip install --quiet -r requirements.txt -r requirements-dev.txt
    echo "$want" > "$stamp"
fi
python -c "import torch; print(f'[setup] ready: torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}')"
