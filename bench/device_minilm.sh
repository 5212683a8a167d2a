#!/usr/bin/env bash
# Device call for issue 5: the tune-model GPU test, then the MiniLM case (bench/minilm_device.py). Results in $OUT.
# Carry [".whl", "bench/minilm"] (bench/minilm from bench/minilm_prepare.py, ~33 MB). Usage:
#   bash bench/device_minilm.sh [extra minilm_device.py args, e.g. --densities 0.05 --db bench/minilm/minilm-tuning.sqlite]
# Env: BUDGET (tuning seconds, default 280), TRIALS (per problem, default 30), SKIP_TESTS=1.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CUPY_CACHE_DIR=/tmp/cupy-cache HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, cupy; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cupy', cupy.__version__)" | tee -a "$OUT/gpu.txt"
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  timeout 120 python3 -m pytest -m gpu -q -rA tests/test_gpu.py -k tune_model > "$OUT/pytest-gpu-tune-model.log" 2>&1
  echo "pytest rc=$?"; tail -3 "$OUT/pytest-gpu-tune-model.log"
fi
python3 bench/minilm_device.py --out "$OUT" --budget "${BUDGET:-280}" --trials "${TRIALS:-30}" "$@" \
  > "$OUT/minilm-stdout.json" 2> "$OUT/minilm.log"
echo "minilm rc=$?"; grep -v "^  batch" "$OUT/minilm.log" | tail -15; grep "^  batch" "$OUT/minilm.log"
python3 - "$OUT" <<'PY'
import json, sys, pathlib
for p in pathlib.Path(sys.argv[1]).glob("minilm-*.json"):
    if p.name == "minilm-stdout.json":
        continue
    r = json.load(open(p))
    for d, v in r["densities"].items():
        print(d, "tune_rc", v.get("tune_rc"), "check", {k: v.get("check", {}).get(k) for k in ("min_cos_sparse_vs_dense_fp32", "fp32_ok", "min_cos_sparse_vs_dense_fp16")})
PY
