#!/usr/bin/env bash
# Session 3 device call (carry [".whl", "bench/minilm"]): runtime overhead, MiniLM re-tuned with the new families
# (more trials on the same studies) and timed eagerly and by CUDA-graph replay, then the GPU tests. All in $OUT/s3.tgz.
set -u
OUT=${OUT:-/tmp/out}; R=/tmp/s3; mkdir -p "$R" /tmp/sat
export PYTHONUNBUFFERED=1 CUPY_CACHE_DIR=/tmp/cupy-cache HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg
T0=$(date +%s)
el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
timeout 90 python3 bench/runtime_overhead.py "$R/rt" > "$R/runtime-overhead.log" 2>&1; el "overhead rc=$?"; cat "$R"/rt/*.md
cp bench/results/minilm/minilm-tuning.sqlite /tmp/sat/d01.sqlite
cp "${D005_DB:?the d=0.05 MiniLM tuning DB of the earlier run}" /tmp/sat/d005.sqlite
for d in 0.1 0.05; do
  db=/tmp/sat/d${d/./}.sqlite; [ "$d" = 0.05 ] && db=/tmp/sat/d005.sqlite
  prev=(); [ -e "$R/m0.1/minilm-h100-80gb-hbm3.json" ] && prev=(--prev "$R/m0.1/minilm-h100-80gb-hbm3.json")
  timeout 200 python3 bench/minilm_device.py --out "$R/m$d" --densities "$d" --trials "${TRIALS:-30}" \
      --budget "${BUDGET:-110}" --db "$db" "${prev[@]}" > "$R/minilm-$d.json" 2> "$R/minilm-$d.log"
  el "minilm $d rc=$?"; grep "batch\|==" "$R/minilm-$d.log" | cut -c1-600
done
tar czf "$OUT/s3.tgz" -C "$R" .
G=tests/test_gpu.py
timeout $(( 585 - ($(date +%s) - T0) )) python3 -m pytest -m gpu -q -rA $G::test_spmm_launcher_every_family_cupy_and_torch \
    $G::test_spmm_and_sparse_linear_in_a_torch_cuda_graph $G::test_spmm_operator_torch $G::test_spmm_operator_inputs_and_errors \
    $G::test_sparse_linear_matches_masked_dense_linear $G::test_poisoned_output_detects_unwritten_rows \
    $G::test_timing_graph_replay_and_baselines $G::test_every_family_correct_on_edge_cases \
    > "$OUT/pytest-gpu.log" 2>&1
el "pytest rc=$?"; grep -E "^(PASSED|FAILED|ERROR)|passed|failed" "$OUT/pytest-gpu.log" | cut -c1-300
