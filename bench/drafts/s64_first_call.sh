#!/usr/bin/env bash
# Session 64's first device call (prepared in session 63), one command from the project's root, carry [".whl"]:
# 1. bench/union_probe.py (any Hopper GPU, ~20 s): the layout check, then wgmma m64n{16,32,64,128}k16 with A from
#    registers filled by ldmatrix at gathered rows (NOTES session 63, Next 2: prediction and falsifier);
# 2. on an H200 only, bench/drafts/s63_h200.sh (the sibling twins of the H200 llm and dl files, each twice).
set -u
cd "$(dirname "$0")/../.."
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 2
O=${OUT:-/tmp/out}
mkdir -p "$O"
python3 bench/union_probe.py --out "$O" 2>&1 | tee "$O/union-probe.log"
rc=${PIPESTATUS[0]}
BUDGET=${BUDGET:-100} bash bench/drafts/s63_h200.sh || rc=$?
exit "$rc"
