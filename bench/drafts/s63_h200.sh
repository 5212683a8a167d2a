#!/usr/bin/env bash
# Session 63's H200 call (only where an H200 came; anything else exits at once so as to spend no device time): the
# sibling twins of the H200 llm file's N = 64-128 cases below 1.0x cold and of the H200 dl file's fp16 d 0.05 / 0.1
# N >= 512 cases, each beside its winner, each file in two runs (bench/drafts/sibling_twins.py;
# results/session63/sibling-twins-*h200.json).
# Then, on the CPU: recold-apply --adopt --agree [--adopt-by warm] (dl: warm; llm: cold, its targets' time), and a
# further call re-times what was adopted (recold --baselines, recold-apply --warm for dl; recold for llm).
set -u
cd "$(dirname "$0")/../.."
name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
case "$name" in
    *H200*) ;;
    *) echo "not an H200 ($name): nothing run"; exit 0;;
esac
O=${OUT:-/tmp/out}
LLM=bench/results/session63/sibling-twins-llm-h200.json
DL=bench/results/session63/sibling-twins-h200.json
B=${BUDGET:-120}
# each twins file twice, in two runs of their own (recold-apply --adopt --agree needs two runs that timed both)
exec bench/device.sh probe recold --records $LLM --workers 12 --budget "$B" --out "$O/recold-llm-twins-h200-a" \
    + probe recold --records $LLM --workers 12 --budget "$B" --out "$O/recold-llm-twins-h200-b" \
    + probe recold --records $DL --workers 12 --budget "$B" --out "$O/recold-dl-twins-h200-a" \
    + probe recold --records $DL --workers 12 --budget "$B" --out "$O/recold-dl-twins-h200-b"
