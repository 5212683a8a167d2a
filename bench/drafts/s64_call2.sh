#!/usr/bin/env bash
# Session 64's second call (the device time's rest, ~300 s; carry [".whl"]): on an H200, the first run of session 63's
# sibling twins (llm N = 64-128 cases below 1.0x cold, then the dl file's); on an H100, the llm suite's 32 N = 64 cases
# of 4096x4096 and 1024x4096 at d 0.05-0.3 (as session 63's N = 128 ones: issue 16's N = 64-128 target on the H100).
set -u
cd "$(dirname "$0")/../.."
. bench/drafts/device_prelude.sh
export CALL_S=${CALL_S:-250}
if grep -q H200 "$O/gpu.txt"; then
    exec bench/device.sh probe recold --records bench/results/session63/sibling-twins-llm-h200.json --workers 12 --budget 80 \
        --out "$O/recold-llm-twins-h200-a" \
        + probe recold --records bench/results/session63/sibling-twins-h200.json --workers 12 --budget 60 --out "$O/recold-dl-twins-h200-a"
fi
exec bench/device.sh suite llm --fresh --only N=64 --only M=4096,1024 --only K=4096 --only density=0.05,0.1,0.2,0.3 \
    --families tc_sp24,tc_wgmma --trials 40 --budget 110
