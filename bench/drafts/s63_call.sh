#!/usr/bin/env bash
# Session 63's device call after the sibling adoption: on an H100, the adopted H100 file's 102 fp16 N >= 512 d <= 0.1
# records re-timed again in a run of their own with the baselines (is 0.913 at d 0.1 a run's luck?), then the GPU
# tests that read the shipped databases; on an H200, the same sibling twins for the H200 file's d 0.05 / 0.1 cases.
set -u
cd "$(dirname "$0")/../.."
ONLY=(--only dtype=fp16 --only density=0.02,0.05,0.1 --only N=512,784,1024,1568,2048,3136,6272,25088)
TESTS=(tests -m gpu -n 8 tests/test_gpu.py tests/test_vendor_gpu.py tests/test_cold_rank.py)
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H100; then
    exec bench/device.sh probe recold --records bench/results/suite-dl-h100-80gb-hbm3.json "${ONLY[@]}" --baselines \
        --workers 12 --budget 200 + "${TESTS[@]}"
else
    exec bench/device.sh probe recold --records bench/results/session63/sibling-twins-h200.json --workers 12 --budget 200 \
        + "${TESTS[@]}"
fi
