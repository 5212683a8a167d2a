#!/usr/bin/env bash
# On the device: GPU tests, then csr_btile v2 and pattern_unrolled tuned alone on a few suite cases.
# Usage (device call, after carrying .whl):  bash bench/device_kernels.sh [TRIALS] [SKIP_TESTS] [WHICH]
# WHICH: btile (csr_btile on 5 suite cases), pattern (pattern_unrolled vs csr_rowsplit on small layers), or all.
set -u
TRIALS=${1:-40}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; ROOT=$PWD
export PYTHONUNBUFFERED=1 SPARSE_AUTOTUNE_DB=/tmp/sat/tuning.sqlite CUPY_CACHE_DIR=/tmp/cupy-cache
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
if [ "${2:-0}" != 1 ]; then
  timeout 420 python3 -m pytest -m gpu -q -rA -x tests/test_gpu.py 2>&1 | tee "$OUT/pytest-gpu.log" | tail -25
fi
run() {  # family shape n density dtype trials
  local tag="$1-$2-n$3-d$4-$5"
  cd "$ROOT"
  timeout 150 python3 -m sparse_autotune tune --families "$1" --shape "$2" --n "$3" --density "$4" --dtype "$5" \
    --trials "$6" --json --no-progress > "$OUT/$tag.json" 2> "$OUT/$tag.log"
  python3 - "$OUT/$tag.json" "$tag" <<'PY'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except Exception as e:
    print(sys.argv[2], "no json:", e); raise SystemExit
b = r["best"]; base = r["baselines"]
print(f"{sys.argv[2]}: {b['time_us']:.2f} us  cusparse {base.get('cusparse_us')} fp32 {base.get('cublas_fp32_us')} "
      f"tf32 {base.get('cublas_tf32_us')} fp16 {base.get('cublas_fp16_us')} floor {r['floor_us']:.2f} "
      f"trials {r['trials']} {json.dumps(b['config'])}", flush=True)
PY
}
WHICH=${3:-all}
if [ "$WHICH" = btile ] || [ "$WHICH" = all ]; then
run csr_btile 512x2048 256 0.1 fp32 "$TRIALS"
run csr_btile 512x2048 256 0.1 fp16 "$TRIALS"
run csr_btile 768x3072 512 0.05 fp32 "$TRIALS"
run csr_btile 768x3072 512 0.05 fp16 "$TRIALS"
run csr_btile 512x2048 1024 0.1 fp32 "$TRIALS"
fi
if [ "$WHICH" = pattern ] || [ "$WHICH" = all ]; then
run pattern_unrolled 64x256 3136 0.2 fp32 12
run pattern_unrolled 128x512 784 0.05 fp32 12
run csr_rowsplit 128x512 784 0.05 fp32 30
run csr_rowsplit 64x256 3136 0.2 fp32 30
run pattern_unrolled 128x512 784 0.05 fp16 12
run csr_rowsplit 128x512 784 0.05 fp16 30
fi
cd "$OUT" && tar czf runs.tgz --remove-files *.json *.log 2>/dev/null; ls "$OUT"
