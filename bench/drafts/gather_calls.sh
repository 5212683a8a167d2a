#!/usr/bin/env bash
# The first device calls for tc_sp24's row-box gathers (ov, perm 1, perm 2; NOTES session 47), run on the device from the
# repository root with $OUT set and the wheels installed (../shared/device/README.md), carry [".whl"]:
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >/dev/null 2>&1;
#   export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1; bash bench/drafts/gather_calls.sh a; cd $OUT && tar czf r.tgz *
#   bash bench/drafts/gather_calls.sh a    # ~4-5 min: the ov GPU test alone first (a new barrier protocol: a short
#                                          # timeout, stop on failure), then every gather GPU test (perm 1 / 2, ov, ovc)
#   bash bench/drafts/gather_calls.sh o    # ~5 min: the dl probe of the ov / ovc twins at d 0.1 with the cut-out
#   bash bench/drafts/gather_calls.sh b    # ~5 min: the perm 1 / 2 twins on the dl cases at d 0.1 and d 0.02 (there:
#                                          # each 64-row block runs only its nonempty columns' chunks, compact_perm)
#   bash bench/drafts/gather_calls.sh p    # ~4 min: the llm recold of 4096^2 N = 128 d 0.2 / 0.3 with perm 1 / 2
#   bash bench/drafts/gather_calls.sh l    # ~3 min: the llm N = 64 / 128 d 0.05 / 0.1 cases beside tc_sp24 ov twins
#                                          # (bench/drafts/recold-llm-ov.json), for recold-apply --suite llm --adopt
#   bash bench/drafts/gather_calls.sh c [TWINS.json]  # ~2 min: recold of the dl records' winning twins (default:
#                                          # sessions 45-46's pt twins and siblings, bench/drafts/recold-dl-twins.json;
#                                          # twins_recold_args.py makes one from kn-ov.json / kn-perm.json too), for
#                                          # recold-apply --suite dl --adopt (no GPU)
# Each widens the space's perm / ov values on the device's copy only (the shipped space holds them at 0 until they pass).
set -u
python3 - <<'PY'
import re
from variants.tc_sp24 import GATHER_VALUES
p = "search_spaces/tc_sp24.toml"
s = open(p).read()
for name, vals in GATHER_VALUES.items():
    s = re.sub(r"(\[params\.%s\]\n(?:#[^\n]*\n)*)values = \[0\]" % name, r"\g<1>values = %s" % vals, s)
open(p, "w").write(s)
PY
grep -A0 -n "^values = \[0, 1, 2" search_spaces/tc_sp24.toml
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
case "${1:-a}" in
a)
    bad=0
    for v in 0 1; do  # ovc 0 (row boxes), then ovc 1 (cp.async): a hang names its protocol
        timeout 150 python3 -m pytest -q -x tests/families/test_tc_sp24.py -m gpu -k "ov_correct_on_dl_layers and $v" 2>&1 | tail -15
        [ "${PIPESTATUS[0]}" = 0 ] || { echo "FAILED or hung: the ov GPU test at ovc $v"; bad=1; }
    done
    [ "$bad" = 0 ] || exit 1
    timeout 270 python3 -m pytest -q tests/families/test_tc_sp24.py -m gpu -n 8 -k "gather_correct or perm_correct" 2>&1 | tail -15 | tee "$OUT/pytest-gather.log"
    ;;
o)
    PROBE_TWIN=ov PROBE_DENS=0.1 PROBE_MAX=16 timeout 330 python3 bench/drafts/kn_probe.py "$OUT/kn-ov.json" built,diag10 2>&1 | tail -40
    ;;
b)
    PROBE_TWIN=perm PROBE_DENS=0.1 PROBE_MAX=10 timeout 270 python3 bench/drafts/kn_probe.py "$OUT/kn-perm.json" built 2>&1 | tail -12
    PROBE_TWIN=perm PROBE_DENS=0.02 PROBE_MAX=10 timeout 270 python3 bench/drafts/kn_probe.py "$OUT/kn-perm-d002.json" built 2>&1 | tail -12
    ;;
p)
    timeout 300 python3 bench/probe.py recold --case 4096x4096:128:0.2:fp16 --case 4096x4096:128:0.3:fp16 \
        --config @bench/drafts/llm-perm-configs.txt --budget 260 --out "$OUT/recold-llm-perm" 2>&1 | tail -30
    ;;
l)
    timeout 420 python3 bench/probe.py recold --records bench/drafts/recold-llm-ov.json --budget 380 \
        --out "$OUT/recold-llm-ov" 2>&1 | tail -60
    ;;
w)  # session 50: ov gathered by the producer warp (not a warpgroup) with its launch bound: GPU tests, the dl probe at
    # d 0.1, its winning twins recold beside the records, the whole family's GPU tests, a tune end to end, the llm ov
    # records again, the dl probe at d 0.05 (in order of need: the call may end at its limit)
    timeout 100 python3 -m pytest -q tests/families/test_tc_sp24.py -m gpu -n 8 -k "gather_correct or perm_correct or ov_correct" 2>&1 | tail -8 | tee "$OUT/pytest-gather-warp.log"
    [ "${PIPESTATUS[0]}" = 0 ] || exit 1
    PROBE_TWIN=ov PROBE_DENS=0.1 PROBE_MAX=16 timeout 120 python3 bench/drafts/kn_probe.py "$OUT/kn-ov-warp.json" built,diag10 2>&1 | tail -20
    python3 bench/drafts/twins_recold_args.py "$OUT/kn-ov-warp.json" --out "$OUT/twins-ov-warp.json" --margin 0.02
    timeout 100 python3 bench/probe.py recold --records "$OUT/twins-ov-warp.json" --budget 85 --out "$OUT/recold-dl-ov-warp" 2>&1 | tail -25
    timeout 150 python3 -m pytest -q tests/families/test_tc_sp24.py -m gpu -n 8 2>&1 | tail -8 | tee "$OUT/pytest-tc_sp24.log"
    timeout 100 python3 -m sparse_autotune tune --shape 512x2048 --density 0.1 --n 1024 --dtype fp16 --families tc_sp24 \
        --trials 40 --db "$OUT/tune.sqlite" --no-progress 2>&1 | tail -25 | tee "$OUT/tune.log"
    timeout 80 python3 bench/probe.py recold --records bench/drafts/recold-llm-ov.json --budget 70 --out "$OUT/recold-llm-ov-warp" 2>&1 | tail -40
    PROBE_TWIN=ov PROBE_DENS=0.05 PROBE_MAX=12 timeout 90 python3 bench/drafts/kn_probe.py "$OUT/kn-ov-warp-d005.json" built 2>&1 | tail -14
    ;;
c)
    timeout 420 python3 bench/probe.py recold --records "${2:-bench/drafts/recold-dl-twins.json}" --budget 380 \
        --out "$OUT/recold-dl-twins" 2>&1 | tail -60
    ;;
esac
