#!/usr/bin/env bash
# Session 65's second device call (any Hopper GPU; carry [".whl"]), one command from the project's root:
# 1. bench/sp24_wg_probe.py at kc 2 with four warpgroups (pwg 1: a producer warpgroup and setmaxnreg) beside today's
#    loop in the same run (NOTES session 65, "pwg");
# 2. on an H100: the GPU tests that read the shipped databases, on the H100 file with the llm N = 64 cases merged in;
#    on an H200: session 63's sibling twins of the H200 llm file's N = 64-128 cases below 1.0x, in two runs
#    (bench/drafts/s63_h200.sh's first two steps; the dl twins are left for a later call).
# LIMIT (default 590): the seconds the call may run. Everything under $OUT ends in at most 8 files (the device tool
# brings back no more).
set -u
cd "$(dirname "$0")/../.."
. bench/drafts/device_prelude.sh
L=${LIMIT:-590}
PYTHONUNBUFFERED=1 timeout 200 python3 bench/sp24_wg_probe.py --out "$O" --tag pwg --configs 2,128,2,6,1 \
    2,128,2,6,1,1 4,128,2,6,1,1 4,128,2,4,1,1 4,128,2,6,1 4,128,1,8,1,1 2,256,2,4,1,1 4,128,2,6,0,1 \
    2,128,2,6,1 2>&1 | tee "$O/sp24-wg-probe-pwg.log"
B=$(( ($L - 30 - SECONDS) / 2 - 40 ))
if grep -q H200 "$O/gpu.txt" && [ "$B" -lt 60 ]; then
    echo "an H200, but ${B} s a twins run is too short: no twins"
elif grep -q H200 "$O/gpu.txt"; then
    LLM=bench/results/session63/sibling-twins-llm-h200.json
    CALL_S=$(( $L - SECONDS )) bench/device.sh probe recold --records $LLM --workers 12 --budget $B \
        --out "$O/recold-llm-twins-h200-a" + probe recold --records $LLM --workers 12 --budget $B \
        --out "$O/recold-llm-twins-h200-b" > "$O/twins.log" 2>&1
    tail -8 "$O/twins.log"
else
    CALL_S=$(( $L - SECONDS )) bench/device.sh tests -m gpu -n 8 tests/test_gpu.py tests/test_vendor_gpu.py \
        tests/test_cold_rank.py > "$O/tests.log" 2>&1
    tail -5 "$O/tests.log"
fi
pack_out s65-call2 sp24-wg-probe-pwg.log
