#!/usr/bin/env bash
# On the device machine: GPU tests, then the evidence run for issue 2. Logs land in $OUT.
# Usage (device call, after carrying .whl):  bash bench/device_check.sh [TRIALS]
set -u
TRIALS=${1:-100}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 SPARSE_AUTOTUNE_DB=/tmp/sat/tuning.sqlite CUPY_CACHE_DIR=/tmp/cupy-cache
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import cupy, sys; print('python', sys.version.split()[0], 'cupy', cupy.__version__)" | tee -a "$OUT/gpu.txt"
python3 -m pytest -m gpu -q -rA tests/test_gpu.py 2>&1 | tee "$OUT/pytest-gpu.log" | tail -40
python3 -m sparse_autotune tune --shape 512x2048 --density 0.1 --trials "$TRIALS" --json --no-progress \
  > "$OUT/tune.json" 2> "$OUT/tune.log"; echo "tune rc=$?"; tail -5 "$OUT/tune.log"
python3 - "$OUT/tune.json" <<'PY'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except Exception as e:
    print("no json:", e); raise SystemExit
b = r["best"]; s = r["speedup"]; base = r["baselines"]
print(f"best {b['time_us']:.2f} us {b['family']} {b['config']}")
print("baselines", base, "floor", round(r["floor_us"], 2))
print("speedup", {k: (round(v, 2) if v else v) for k, v in s.items()}, "trials", r["trials"])
PY
