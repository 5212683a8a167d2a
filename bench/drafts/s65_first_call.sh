#!/usr/bin/env bash
# Session 65's first device call (prepared in session 64), one command from the project's root, carry [".whl",
# "bench/state"] (bench/state: session 64's llm N = 64 suite state, git-ignored, on the machine that ran session 64):
# 1. bench/sp24_wg_probe.py (any Hopper GPU, ~30 s): tc_sp24's loop with its copies at two and four consumer
#    warpgroups (NOTES session 64, Next 3: the port model's predictions per config are printed beside the rates);
# 2. on an H200: session 63's sibling twins (bench/drafts/s63_h200.sh); on an H100: Nsight Compute profiles of issue 18's
#    slowest fp16 d 0.05 / 0.02 N >= 512 cases (the shipped H100 file's records; re-time 3's slowest), then the llm
#    N = 64 run's last 10 cases (resumed from bench/state when it was carried; else nothing).
set -u
S0=$SECONDS
cd "$(dirname "$0")/../.."
. bench/drafts/device_prelude.sh
PYTHONUNBUFFERED=1 timeout 150 python3 bench/sp24_wg_probe.py --out "$O" 2>&1 | tee "$O/sp24-wg-probe.log"
if grep -q H200 "$O/gpu.txt"; then
    exec bash bench/drafts/s63_h200.sh
fi
H=db/h100-80gb-hbm3.sqlite
export CALL_S=$(( 595 - (SECONDS - S0) ))
STEPS=(probe profile --case 3072x768:2048:0.05:fp16:uniform --db $H --ncu
       + probe profile --case 128x512:6272:0.05:fp16:powerlaw --db $H --ncu
       + probe profile --case 512x2048:1024:0.02:fp16:powerlaw --db $H --ncu)
if [ -f bench/state/suite-llm.tgz ]; then
    exec bench/device.sh "${STEPS[@]}" + suite llm --only N=64 --only M=4096,1024 --only K=4096 \
        --only density=0.05,0.1,0.2,0.3 --families tc_sp24,tc_wgmma --trials 40
fi
bench/device.sh "${STEPS[@]}"
echo "no bench/state/suite-llm.tgz carried: the llm N = 64 run is not resumed"
