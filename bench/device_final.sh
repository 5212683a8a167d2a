#!/usr/bin/env bash
# Device run: GPU tests, runtime overhead, the quick suite, and the shipped-DB export. Results under $OUT.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 SPARSE_AUTOTUNE_DB=/tmp/sat/user.sqlite CUPY_CACHE_DIR=/tmp/cupy-cache
python3 -m pytest -m gpu -q -rA tests/test_gpu.py > "$OUT/gpu.log" 2>&1; echo "pytest rc=$?"; tail -4 "$OUT/gpu.log"
python3 bench/runtime_overhead.py "$OUT" 2>&1 | tail -9
python3 -m sparse_autotune bench --suite quick --trials 40 --out "$OUT" --db /tmp/sat/bench.sqlite --budget ${BUDGET:-200} > "$OUT/bench.log" 2>&1
echo "bench rc=$?"; tail -30 "$OUT/bench.log"
python3 -m sparse_autotune db export "$OUT/h100-80gb-hbm3.sqlite" --db /tmp/sat/bench.sqlite --best-only
python3 -m sparse_autotune db check "$OUT/h100-80gb-hbm3.sqlite"
