#!/usr/bin/env bash
# Install, then start JupyterLab on the demo notebook in embedded mode (2 declared GPUs).
#   bash scripts/demo.sh             # JupyterLab at http://127.0.0.1:8888/lab
#   bash scripts/demo.sh --headless  # run the demo notebook without a browser and print it
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh train
# shellcheck disable=SC1091
. .venv/bin/activate
export GPUQUEUE_GPUS="${GPUQUEUE_GPUS:-2}"
if [ "${1:-}" = "--headless" ]; then
  exec python scripts/run_demo.py binder/demo.ipynb
fi
exec jupyter lab --ip=127.0.0.1 --port="${PORT:-8888}" --allow-root binder/demo.ipynb
