#!/usr/bin/env bash
# Training and search speed on one GPU, with the machine's own PyTorch (no project pins, no snakemake):
#   bench/gpu.sh                 # on a GPU machine: under 8 minutes on one H200 (bench/RESULTS.md)
#   bench/gpu.sh --cpu-smoke     # a dry run on a CPU in seconds (tests/test_bench_gpu.py runs it)
# Runs qgen from src/ on synthetic CIFAR-shaped data; nothing is downloaded. Options: bench/gpu.py --help.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" bench/gpu.py "$@"
