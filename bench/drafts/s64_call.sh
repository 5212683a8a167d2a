#!/usr/bin/env bash
# Session 64's device call, one command from the project's root, carry [".whl"]:
# 1. bench/union_probe.py (any Hopper GPU, ~20 s; NOTES session 63, Next 2: prediction and falsifier);
# 2. on an H100: re-time 3 of the H100 dl file's 102 fp16 d 0.02 / 0.05 / 0.1 N >= 512 records with cuSPARSE / cuBLAS
#    warm in the same process (session 63's two re-times read 0.913 / 0.908x at d 0.1, goal 0.9: a third run of its
#    own says whether that holds beyond one machine's luck); on an H200: session 63's sibling twins (s63_h200.sh);
# 3. the GPU tests that read the shipped databases (not re-run after session 63's last database change).
set -u
cd "$(dirname "$0")/../.."
. bench/drafts/device_prelude.sh
PYTHONUNBUFFERED=1 timeout 120 python3 bench/union_probe.py --out "$O" 2>&1 | tee "$O/union-probe.log"
ONLY=(--only dtype=fp16 --only density=0.02,0.05,0.1 --only N=512,784,1024,1568,2048,3136,6272,25088)
TESTS=(tests -m gpu -n 8 tests/test_gpu.py tests/test_vendor_gpu.py tests/test_cold_rank.py)
if grep -q H200 "$O/gpu.txt"; then
    LLM=bench/results/session63/sibling-twins-llm-h200.json
    DL=bench/results/session63/sibling-twins-h200.json
    exec bench/device.sh probe recold --records $LLM --workers 12 --budget 90 --out "$O/recold-llm-twins-h200-a" \
        + probe recold --records $DL --workers 12 --budget 90 --out "$O/recold-dl-twins-h200-a" + "${TESTS[@]}"
fi
exec bench/device.sh probe recold --records bench/results/suite-dl-h100-80gb-hbm3.json "${ONLY[@]}" --baselines \
    --workers 12 --budget 200 + "${TESTS[@]}"
