#!/usr/bin/env bash
# Session 66's device call (any Hopper GPU; carry [".whl"]), one command from the project's root.
# On an H200 (issue 16's H200 llm file, NOTES session 66): session 63's sibling twins of the llm file's N = 64-128 cases
# below 1.0x cold (results/session63/sibling-twins-llm-h200.json), timed in two runs; then, here on the device's CPU,
# `recold-apply --adopt --agree` (by cold time, the llm targets' time) and the adopted records re-timed in a run of
# their own (the numbers to report: no best-of-several pick in them); then, while time is left, Nsight Compute of the
# slowest N <= 32 case of each missed density target.
# On anything else: bench/drafts/s65_call2.sh (the pwg probe, then on an H100 the GPU tests on the shipped databases).
# LIMIT (default 580): the seconds the call may run. Everything under $OUT ends in at most 8 files.
set -u
cd "$(dirname "$0")/../.."
name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
case "$name" in
    *H200*) ;;
    *) exec bash bench/drafts/s65_call2.sh;;
esac
. bench/drafts/device_prelude.sh
L=${LIMIT:-580}
LLM=bench/results/session63/sibling-twins-llm-h200.json
B=${TWINS_BUDGET:-$(( (L - 200) / 2 - 50 ))}
CALL_S=$(( $L - 200 - SECONDS )) bench/device.sh probe recold --records $LLM --workers 12 --budget $B \
    --out "$O/twins-a" + probe recold --records $LLM --workers 12 --budget $B --out "$O/twins-b" > "$O/twins.log" 2>&1
tail -6 "$O/twins.log"
python3 bench/probe.py recold-apply --records bench/results/suite-llm-h200.json --rows "$O/twins-a.json" \
    "$O/twins-b.json" --suite llm --adopt --agree --out "$O/adopted" > "$O/apply.log" 2>&1
grep -v "^not applied" "$O/apply.log" | tail -4
python3 - "$O" <<'PY'
import json, sys
recs = json.load(open(f"{sys.argv[1]}/adopted/suite-llm-h200.json"))
ad = [r for r in recs if r.get("adopted")]
json.dump(ad, open(f"{sys.argv[1]}/adopted-records.json", "w"), indent=1)
print(f"{len(ad)} records adopted")
PY
R=$(( $L - 25 - SECONDS ))
if [ "$R" -gt 60 ] && [ -s "$O/adopted-records.json" ]; then
    CALL_S=$R bench/device.sh probe recold --records "$O/adopted-records.json" --workers 12 --budget $(( R - 70 )) \
        --out "$O/retime" > "$O/retime.log" 2>&1
    tail -4 "$O/retime.log"
fi
# the slowest N <= 32 case of each missed density target (H200 llm file), under Nsight Compute, while time is left
for c in 11008x4096:32:0.5:bf16:rowuniform 11008x4096:32:0.1:bf16:rowuniform 11008x4096:32:0.05:bf16:uniform; do
    R=$(( $L - 25 - SECONDS ))
    [ "$R" -gt 70 ] || break
    CALL_S=$R bench/device.sh probe profile --case $c --db db/h200.sqlite --ncu >> "$O/ncu.log" 2>&1
done
pack_out s66 twins.log
