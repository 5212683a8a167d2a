#!/usr/bin/env bash
# Session 63's first device call (prepared in session 62: bench/drafts/tc_sp24-rt.md, its v2 prediction), one command
# on the device machine from the project's root:   carry [".whl"]; command: bash bench/drafts/rt2_device_call.sh
# The device's copy of the tree gets bench/drafts/tc_sp24-rt2.patch (main is left as it is here), then bench/device.sh:
# 1. the rt twin test (rt 0 / 2 everywhere, 16 where it fits; v1's rt 16 gave a wrong C on one adversarial matrix) and
#    test_gpu's tune-then-lookup test (the shipped databases, updated in session 62, are read by the CPU tests);
# 2. recold of bench/results/session62/rt-twins.json: each fp16 d 0.05 / 0.1 N >= 512 tc_sp24 winner of the H100 file
#    beside its rt 2 / 4 / 8 twins, one run (v1's numbers: results/session62/rt-twins-recold.md);
# 3. Nsight Compute of 768x768 N = 2048 d 0.1 at rt 0 and rt 2 (v1: GMMA stall 0.20 / 2.74 an issued instruction).
# ~4 min. Outputs under $OUT as bench/device.sh writes them.
set -u
cd "$(dirname "$0")/../.."
git apply bench/drafts/tc_sp24-rt2.patch || { echo "tc_sp24-rt2.patch does not apply to this tree" >&2; exit 2; }
CFG='{"ar":0,"bn":128,"kc":2,"l2":25,"mc":1,"ov":0,"ovc":0,"perm":0,"pt":0,"pw":1,"rq":0,"rs":0,"rw":0,"splitk":1,"stages":4,"wg":2'
exec bench/device.sh tests -m gpu -n 4 -k "rt_take or lookup" tests/families/test_tc_sp24.py tests/test_gpu.py \
    + probe recold --records bench/results/session62/rt-twins.json --workers 8 \
    + probe profile --case 768x768:2048:0.1:fp16 --family tc_sp24 --config "$CFG,\"rt\":0}" --ncu "${OUT:-/tmp/out}/ncu/rt0.txt" \
    + probe profile --case 768x768:2048:0.1:fp16 --family tc_sp24 --config "$CFG,\"rt\":2}" --ncu "${OUT:-/tmp/out}/ncu/rt2v2.txt"
