#!/usr/bin/env bash
# The device calls left by session 54, run from the repository root with $OUT set (no extra wheels needed for `p`):
#   export PYTHONUNBUFFERED=1; bash bench/drafts/session54_calls.sh p
#   p (~1 min): bench/tf32_probe.py whole: the mma.sp m16n8k16 tf32 layout (settled in session 54, kept as a check),
#      the wgmma.sp m64n64k16 tf32 layout with B K-major (the nk route's packing: written in session 54, not yet run)
#      and the rates
#   g (~6 min, carry [".whl"] with pytest-xdist): the GPU tests of the scale-out / runtime paths session 54 touched
#      only on the CPU side (the storage's WAL mode has no GPU test; test_gpu's tuner runs use it): tests/test_gpu.py
set -u
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
case "${1:-p}" in
p)
    timeout 200 python3 bench/tf32_probe.py --out "$OUT" 2>&1 | tee "$OUT/tf32-probe.log" | cut -c1-800
    ;;
g)
    timeout 330 python3 -m pytest -q -n 8 -m gpu tests/test_gpu.py 2>&1 | tail -20 | tee "$OUT/pytest-test_gpu.log"
    ;;
esac
