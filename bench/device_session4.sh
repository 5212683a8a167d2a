#!/usr/bin/env bash
# Session 4's last device call (carry .whl and bench/dl-state): the GPU tests that the first call's time limit cut
# off, two Nsight Compute profiles, then the dl suite goes on (bench/device_dl.sh) for the time left of TOTAL_S.
set -u
OUT=${OUT:-/tmp/out}; TOTAL=${1:-470}; T0=$(date +%s)
export PYTHONUNBUFFERED=1 CUPY_CACHE_DIR=/tmp/cupy-cache
el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
G=tests/test_gpu.py
timeout 170 python3 -m pytest -m gpu -q -rA "$G::test_every_family_correct_on_edge_cases[fp16]" \
    "$G::test_wide_covering_sample_correct" > "$OUT/pytest-gpu-rest.log" 2>&1
el "pytest rc=$?"; grep -E "^(PASSED|FAILED|ERROR)|passed|failed" "$OUT/pytest-gpu-rest.log" | cut -c1-250
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
SECT="--section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats --section WarpStateStats --section SchedulerStats"
if [ -n "$NCU" ]; then
  timeout 60 "$NCU" $SECT -k regex:spmm_kernel -s 2 -c 1 python3 bench/profile_case.py --shape 768x3072 --n 512 \
      --density 0.1 --dtype fp32 --db db/h100-80gb-hbm3.sqlite > "$OUT/ncu-rowsplit-768x3072-n512-d0.1-fp32.txt" 2>&1
  el "ncu rowsplit rc=$?"
  timeout 60 "$NCU" $SECT -k regex:spmm_kernel -s 2 -c 1 python3 bench/profile_case.py --shape 512x2048 --n 256 \
      --density 0.1 --dtype fp16 --family tc_gather --config '{"rn": 2, "nt": 2, "ksplit": 8, "unroll": 4}' \
      > "$OUT/ncu-tc_gather-512x2048-n256-d0.1-fp16.txt" 2>&1
  el "ncu tc_gather rc=$?"
  grep -E "Duration|Memory Throughput|DRAM Throughput|Compute \(SM\)|Achieved Occupancy|Registers Per|Stall|Issue Slots|L1/TEX Hit|L2 Hit" "$OUT"/ncu-*.txt | cut -c1-200 | head -40
else
  el "no ncu on this machine"
fi
LEFT=$(( TOTAL - ($(date +%s) - T0) ))
el "suite: $LEFT s left"
[ "$LEFT" -gt 120 ] && HARD_S=$(( LEFT - 40 )) bash bench/device_dl.sh $(( LEFT - 110 )) 8 20
el "end"
