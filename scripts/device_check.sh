#!/usr/bin/env bash
# The checks that need the accelerator machine (one H200, 16 CPU cores, torch
# preinstalled, no Docker, no network), as one command. Installs nothing.
#
#   bash scripts/device_check.sh DATA_DIR OUT_DIR
#
# DATA_DIR: a data root holding MNIST/raw. Writes into OUT_DIR:
#   gpu_check.md/json   issue 9: GPU throughput at 1-8 processes, stop/resume,
#                       CPU evaluation of the GPU checkpoint, bitwise resume
#   breakdown.md/json   issue 11: whole CPU runs at 1, 2, 4, 8, 16 processes,
#                       16 epochs each: start-up, training, evaluation, boundaries
# About 2-3 minutes for the first, 4 for the second.
set -uo pipefail
data=${1:?usage: device_check.sh DATA_DIR OUT_DIR}
out=${2:?usage: device_check.sh DATA_DIR OUT_DIR}
cd "$(dirname "$0")/.." || exit 1
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
status=0
timeout 300 python3 scripts/gpu_check.py --data-dir "$data" --out "$out" || status=1
timeout 330 python3 scripts/benchmark.py --breakdown 1,2,4,8,16 --breakdown-epochs 16 \
  --data-dir "$data" --out "$out" || status=1
exit "$status"
