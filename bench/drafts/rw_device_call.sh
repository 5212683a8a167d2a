#!/usr/bin/env bash
# Session 61's first device call (prepared in session 60, bench/NOTES.md "rw"): one command on the device machine from
# the project's root:   carry [".whl"]; command: bash bench/drafts/rw_device_call.sh
# 1. the GPU tests of the batched residual walk (rw 1 / 2 give C bit for bit as rw 0, fp16 / bf16 / tf32; session 61
#    also ran tsh's, dropped since with tsh);
# 2. kn_probe on the dl suite's fp16 tc_sp24 records at d 0.1 and 0.05 (H200 file's configs), each in the forms built
#    (rw 0), rw1, rw2 and diag10 (no residual: the bound), cuBLAS FP16 in the same run; the slowest against cuBLAS first;
# 3. ts_gap_probe with its nosc column (ts's remaining gap at several tiles a block, NOTES session 60 Next 2; session 61
#    also timed tsh there).
# Logs and JSON under $OUT, one tarball (the device returns at most 8 files). Exit status: the failed steps.
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}
W=/tmp/rw-call
mkdir -p "$OUT" "$W"
LOGS=$W TAIL=30
. bench/drafts/call_steps.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$W/gpu.txt"
step pytest-gpu-rw 240 python3 -m pytest -m gpu -n 4 -q tests/families/test_tc_sp24.py -k rw_walk
step kn-rw 300 env PROBE_TWIN=none PROBE_DENS=0.1,0.05 PROBE_MAX=${PROBE_MAX:-30} \
    python3 bench/drafts/kn_probe.py "$W/kn-rw.json" built,rw1,rw2,diag10
step ts-gap 90 python3 bench/drafts/ts_gap_probe.py "$W/ts-gap.json"
tar czf "$OUT/rw-call.tgz" -C "$W" .
echo "== done ($fail failed)"
exit $fail
