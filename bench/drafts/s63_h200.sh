#!/usr/bin/env bash
# Session 63's H200 call (only where an H200 came; anything else exits at once so as to spend no device time): the
# sibling twins of the H200 dl file's fp16 d 0.05 / 0.1 N >= 512 cases and of the H200 llm file's N = 64-128 cases below
# 1.0x cold, each beside its winner in one run (bench/drafts/sibling_twins.py; results/session63/sibling-twins-*h200.json).
# Then, on the CPU: recold-apply --adopt --adopt-by warm (dl) / cold (llm, whose targets use cold times), and a second
# call re-times what was adopted (recold --baselines, recold-apply --warm for dl; recold for llm).
set -u
cd "$(dirname "$0")/../.."
name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
case "$name" in
    *H200*) ;;
    *) echo "not an H200 ($name): nothing run"; exit 0;;
esac
exec bench/device.sh probe recold --records bench/results/session63/sibling-twins-llm-h200.json --workers 12 \
    --budget "${LLM_BUDGET:-120}" --out "${OUT:-/tmp/out}/recold-llm-twins-h200" \
    + probe recold --records bench/results/session63/sibling-twins-h200.json --workers 12 --budget "${DL_BUDGET:-120}" \
    --out "${OUT:-/tmp/out}/recold-dl-twins-h200"
