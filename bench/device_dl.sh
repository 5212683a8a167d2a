#!/usr/bin/env bash
# The dl suite over several device calls (each at most 10 minutes). One call runs
#   bench --suite dl --trials TRIALS --workers WORKERS --budget BUDGET_S
# through an SQLite storage (the queue resumes) with WORKERS processes sharing the GPU (they compile in parallel and
# take turns to verify and time), then packs its state into $OUT: dl-state.tgz (storage, tuning DB, results) and
# cupy-cache.tgz (compiled kernels, so the next call does not compile them again). To go on in the next call, copy
# both files into bench/dl-state/ (git-ignored) here and carry that folder:
#   bash bench/device_dl.sh BUDGET_S [WORKERS=4] [TRIALS=20]
set -u
BUDGET=${1:?usage: device_dl.sh BUDGET_S [WORKERS] [TRIALS]}; WORKERS=${2:-4}; TRIALS=${3:-20}
OUT=${OUT:-/tmp/out}; S=/dev/shm/dl; [ -w /dev/shm ] || S=/tmp/dl; mkdir -p "$S/out" "$OUT"  # tmpfs: no fsync per storage commit
export PYTHONUNBUFFERED=1 CUPY_CACHE_DIR=$S/cupy-cache MPLBACKEND=Agg
for f in dl-state.tgz cupy-cache.tgz; do
    [ -e "bench/dl-state/$f" ] && tar xzf "bench/dl-state/$f" -C "$S"
done
echo "state: $(ls "$S"/out 2>/dev/null | tr '\n' ' '); kernels cached: $(find "$S/cupy-cache" -type f 2>/dev/null | wc -l)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
T0=$(date +%s)
# a hard stop HARD_S seconds after the start (default budget + 90) so the state is packed whatever a worker is doing
timeout -k 5 "${HARD_S:-$(( ${BUDGET%.*} + 90 ))}" python3 -m sparse_autotune bench --suite dl --trials "$TRIALS" --out "$S/out" --db "$S/tuning.sqlite" \
    --storage "sqlite:///$S/storage.sqlite" --workers "$WORKERS" --heartbeat 5 --budget "$BUDGET" \
    > "$S/out/summary-last.json" 2> "$S/bench-$T0.log"
echo "bench rc=$? after $(( $(date +%s) - T0 )) s"
pkill -f "sparse_autotune worker" && sleep 2  # workers left by a hard stop must not write while the state is packed
python3 -m sparse_autotune status --storage "sqlite:///$S/storage.sqlite" > "$S/status.txt" 2>&1
head -12 "$S/status.txt"
grep -c "problem .* done" "$S/bench-$T0.log" | sed 's/^/cases finished in this call: /'
grep -E "done:|failed|Error|error" "$S/bench-$T0.log" | tail -8 | cut -c1-300
cat "$S/out/summary-last.json" | head -30
tar czf "$OUT/dl-state.tgz" -C "$S" $(cd "$S" && ls -d storage.sqlite* tuning.sqlite* out bench-*.log status.txt 2>/dev/null)
tar czf "$OUT/cupy-cache.tgz" -C "$S" cupy-cache
ls -la "$OUT"
