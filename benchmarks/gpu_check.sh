#!/usr/bin/env bash
# Run on a CUDA machine that has only torch and torchvision (and their numpy/Pillow): no install, no mlflow/dvc.
#   bash benchmarks/gpu_check.sh [--epochs 5] [--batch-size 256] [--compile]
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} exec python3 benchmarks/gpu_check.py "$@"
