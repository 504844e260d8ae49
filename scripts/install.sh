#!/usr/bin/env bash
# Create .venv and install jupyter-gpuqueue into it (editable), with the extras named in $1
# (default "train"). torch comes first, as the CPU build pinned below, so that the project's
# torch>=2.4 range is already met and pip never pulls a multi-GB CUDA build. scripts/constraints.txt
# pins the S3 test stack (s3fs, boto3), which pip cannot resolve in time on its own.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-train}"
python3 -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q -U pip
python -m pip install -q "torch==${GPUQUEUE_TORCH_VERSION:-2.13.0}"
python -m pip install -q -c scripts/constraints.txt -e ".[${extras}]"
