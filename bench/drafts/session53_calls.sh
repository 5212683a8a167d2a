#!/usr/bin/env bash
# The device calls left by session 52 (no machine was lent; NOTES session 52, Next), run from the repository root with
# $OUT set, carry [".whl"] (bash ../shared/device/wheels.sh pytest-xdist execnet):
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >/dev/null 2>&1;
#   export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1; bash bench/drafts/session53_calls.sh 1; cd $OUT && tar czf r.tgz *
#   1 (~4 min): the GPU tests sessions 51-52 could not run (tc_scatter with its corrected count; tc_bitmap, tc_tiled2,
#     tc_tiled3 after the adapt / workspace helpers moved into core.families; the tests the faster Space.feasible
#     serves: test_gpu's covering samples), then the tf32 probe (issue 18: dense / sparse TF32 rates, the kn loop)
#   2 (~7 min): tests/families/test_tc_sp24.py -m gpu in a call of its own (session 50's Next, never run to its end)
set -u
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
case "${1:-1}" in
1)
    timeout 330 python3 -m pytest -q -n 8 -m gpu tests/families/test_tc_scatter.py tests/families/test_tc_bitmap.py \
        tests/families/test_tc_tiled2.py tests/families/test_tc_tiled3.py 2>&1 | tail -20 | tee "$OUT/pytest-s52-families.log"
    timeout 60 python3 bench/tf32_probe.py --out "$OUT" 2>&1 | tee "$OUT/tf32-probe.log"
    ;;
a)  # 1 and test_gpu in one call (~9.5 min): the probe first, the family tests, then the tuner's GPU tests
    timeout 60 python3 bench/tf32_probe.py --out "$OUT" 2>&1 | tee "$OUT/tf32-probe.log"
    timeout 230 python3 -m pytest -q -n 8 -m gpu tests/families/test_tc_scatter.py tests/families/test_tc_bitmap.py \
        tests/families/test_tc_tiled2.py tests/families/test_tc_tiled3.py 2>&1 | tail -20 | tee "$OUT/pytest-s52-families.log"
    timeout 270 python3 -m pytest -q -n 8 -m gpu tests/test_gpu.py 2>&1 | tail -20 | tee "$OUT/pytest-test_gpu.log"
    ;;
b)  # the short form of a (~6 min: device budget spent on refused starts): the probe and the tuner's GPU tests
    timeout 60 python3 bench/tf32_probe.py --out "$OUT" 2>&1 | tee "$OUT/tf32-probe.log"
    timeout 280 python3 -m pytest -q -n 8 -m gpu tests/test_gpu.py 2>&1 | tail -20 | tee "$OUT/pytest-test_gpu.log"
    ;;
c)  # what ~4.5 minutes of budget past a machine's start allows: the probe, then test_gpu as far as it gets
    timeout 60 python3 bench/tf32_probe.py --out "$OUT" 2>&1 | tee "$OUT/tf32-probe.log"
    timeout 190 python3 -m pytest -q -n 8 -m gpu tests/test_gpu.py 2>&1 | tail -20 | tee "$OUT/pytest-test_gpu.log"
    ;;
2)
    timeout 560 python3 -m pytest -q -n 8 -m gpu tests/families/test_tc_sp24.py 2>&1 | tail -25 | tee "$OUT/pytest-tc_sp24.log"
    ;;
esac
