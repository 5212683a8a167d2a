#!/usr/bin/env bash
# The ts draft's device call (bench/drafts/tc_sp24-ts.md), one command on the device machine from the project's root:
#   carry [".whl"]; command: bash bench/drafts/ts_device_call.sh
# (The patch it applied first landed in session 59.) The GPU tests that cover ts,
# tf32_via_fp16.py --integrated --pdl, the conversion probe (v4 / v5), end-to-end tunes of a tf32 layer in kn and in nk
# (tsn 0 / 1 searched), most telling first (a call cut short keeps them); every log and JSON
# under $OUT. A step that fails does not stop the next ones; the exit status is the number of failed steps.
set -u
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
LOGS=$OUT
. bench/drafts/call_steps.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
step pytest-gpu-ts 170 python3 -m pytest -m gpu -n 8 -q tests/families/test_tc_sp24.py \
    -k "ts_ or tsn or test_correct_on_edge_cases or tf32"
step tf32-via-fp16 150 python3 bench/drafts/tf32_via_fp16.py "$OUT/ts-integrated.json" --integrated --pdl
step ts-convert 60 python3 bench/drafts/ts_convert_probe.py "$OUT/ts-convert.json"
step ts-tune 90 python3 -m sparse_autotune tune --shape 3072x768 --n 2048 --density 0.05 --dtype tf32 --trials 30 \
    --db "$OUT/ts.sqlite"
step ts-tune-nk 90 python3 -m sparse_autotune tune --shape 3072x768 --n 2048 --density 0.05 --dtype tf32 --layout nk \
    --trials 30 --db "$OUT/ts-nk.sqlite"
echo "== done ($fail failed)"
exit $fail
