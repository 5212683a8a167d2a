#!/usr/bin/env bash
# One device call: every GPU test (logged), then the MiniLM case at one density (bench/device_minilm.sh).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CUPY_CACHE_DIR=/tmp/cupy-cache SPARSE_AUTOTUNE_DB=/tmp/sat/tuning.sqlite
timeout ${TEST_TIMEOUT:-300} python3 -m pytest -m gpu -q -rA tests/test_gpu.py > "$OUT/pytest-gpu.log" 2>&1
echo "pytest rc=$?"; grep -E "^(PASSED|FAILED|ERROR)|passed|failed" "$OUT/pytest-gpu.log" | tail -30
unset SPARSE_AUTOTUNE_DB
SKIP_TESTS=1 bash bench/device_minilm.sh "$@"
