#!/usr/bin/env bash
# Session 51's device calls for tc_scatter (NOTES session 51), run from the repository root with $OUT set, carry [".whl"]:
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >/dev/null 2>&1;
#   export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1; bash bench/drafts/scatter_calls.sh 1; cd $OUT && tar czf r.tgz *
#   1: GPU tests (stop on failure), the probe (4096^2 and 14336x4096, N = 16 / 32, d 0.05 / 0.1: records and 8 configs
#      each in one run), a tune end to end, SASS of the probe's base config where the image has cuobjdump
#   2 [ARGS]: a wider recold (scatter_records.py ARGS)
set -u
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
case "${1:-1}" in
1)
    timeout 200 python3 -m pytest -q -x tests/families/test_tc_scatter.py -m gpu -n 8 2>&1 | tail -15 | tee "$OUT/pytest-tc_scatter.log"
    [ "${PIPESTATUS[0]}" = 0 ] || exit 1
    python3 bench/drafts/scatter_records.py "$OUT/probe1-in.json" 16,32 0.05,0.1 4096x4096,14336x4096
    timeout 240 python3 bench/probe.py recold --records "$OUT/probe1-in.json" --ungated --budget 200 --out "$OUT/recold-scatter1" 2>&1 | tail -80
    timeout 90 python3 -m sparse_autotune tune --shape 4096x4096 --density 0.1 --n 16 --dtype fp16 --families tc_scatter \
        --trials 12 --db "$OUT/tune.sqlite" --no-progress 2>&1 | tail -15 | tee "$OUT/tune-tc_scatter.log"
    if command -v cuobjdump >/dev/null && command -v nvcc >/dev/null; then
        python3 - <<'PY'
import os
from sparse_autotune.core import render
from sparse_autotune.core.families import get_family
sp = get_family("tc_scatter").space
cfg = sp.normalize(dict(kc=4, mr=2, nb=2, warps=4, pf=2, splitk=8, minb=1, bload="vec", red="atomic"), "fp16")
open("/tmp/ts.cu", "w").write(render.render(sp, cfg, "fp16"))
PY
        nvcc -arch=sm_90a -cubin -o /tmp/ts.cubin /tmp/ts.cu && cuobjdump -sass /tmp/ts.cubin > "$OUT/sass-tc_scatter.txt"
    fi
    ;;
2)
    shift
    python3 bench/drafts/scatter_records.py "$OUT/probe2-in.json" "$@"
    timeout 520 python3 bench/probe.py recold --records "$OUT/probe2-in.json" --ungated --budget 470 --out "$OUT/recold-scatter2" 2>&1 | tail -120
    ;;
esac
# 3: the edge-case failure in full, two ncu profiles, the occupancy sweep (session 51, call 3)
if [ "${1:-}" = 3 ]; then
    timeout 120 python3 -m pytest -q tests/families/test_tc_scatter.py -m gpu -n 8 --tb=short > "$OUT/pytest-tc_scatter.log" 2>&1
    grep -E "^E |passed|failed" "$OUT/pytest-tc_scatter.log" | head -20
    timeout 60 python3 bench/probe.py profile --case 14336x4096:16:0.1:fp16 --family tc_scatter \
        --config '{"kc":4,"mr":1,"nb":2,"warps":8,"pf":3,"rpb":4,"splitk":16,"minb":1,"bload":"vec","red":"atomic"}' --ncu "$OUT/ncu-scatter-14336-n16.txt" 2>&1 | tail -3
    timeout 60 python3 bench/probe.py profile --case 4096x4096:16:0.1:fp16 --family tc_scatter \
        --config '{"kc":4,"mr":2,"nb":2,"warps":8,"pf":3,"splitk":8,"minb":1,"bload":"vec","red":"atomic"}' --ncu "$OUT/ncu-scatter-4096-n16.txt" 2>&1 | tail -3
    grep -E "Duration|Achieved Occupancy|Registers Per|Theoretical Occupancy|Issue Slots Busy|Mem Busy|Max Bandwidth|L1/TEX Hit|Shared|stall|Warp Cycles Per Issued|Block Limit|Waves Per SM|DRAM Throughput|Compute \(SM\)" "$OUT"/ncu-scatter-*.txt | head -80
    python3 bench/drafts/scatter_records.py "$OUT/probe3-in.json" 16,32 0.1 4096x4096,14336x4096 fp16 uniform occ
    timeout 300 python3 bench/probe.py recold --records "$OUT/probe3-in.json" --ungated --budget 260 --out "$OUT/recold-scatter3" 2>&1 | tail -3
    python3 bench/drafts/scatter_summary.py "$OUT/recold-scatter3.json"
    timeout 100 python3 -m sparse_autotune tune --shape 512x2048 --density 0.1 --n 1024 --dtype fp16 --families tc_sp24 \
        --trials 20 --db "$OUT/tune.sqlite" --no-progress > "$OUT/tune-tc_sp24.log" 2>&1; tail -5 "$OUT/tune-tc_sp24.log"
fi
