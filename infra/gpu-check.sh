#!/usr/bin/env bash
# The GPU check for a lent GPU machine, from a fresh checkout: `infra/gpu-check.sh [OUT.json]` builds .venv
# (`make env`) and runs `mrgen bench gpu` (≤ 8 min on one GPU), printing one JSON of figures and writing it to OUT.json
# (default gpu-check.json). Extra flags go to `mrgen bench gpu` (e.g. --sections synthesis endpoint).
# CI runs the same code on the CPU: `mrgen bench gpu --device cpu --tiny` (tests/jobs/test_gpu_bench.py).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu-check.json}
shift || true
export RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled HF_HUB_OFFLINE=1 RAY_DATA_DISABLE_PROGRESS_BARS=1
export RAY_ADDRESS=${RAY_ADDRESS:-local} MRGEN_RAY_LOG_TO_DRIVER=${MRGEN_RAY_LOG_TO_DRIVER:-0}
make -s env
exec .venv/bin/mrgen bench gpu --device cuda --out "$OUT" "$@"
