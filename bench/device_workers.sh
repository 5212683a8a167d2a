#!/usr/bin/env bash
# On a device machine with two GPUs (nvidia-h200-x2): the quick suite tuned by one worker, then by two workers (one per
# GPU, CUDA_VISIBLE_DEVICES per process) sharing an SQLite storage on one host; wall times and logs land in $OUT.
# Usage (device call, after carrying .whl as ../shared/device/README.md says):
#   bash bench/device_workers.sh [TRIALS]      (default 40 trials per case, as `bench` uses)
# Each run starts from empty storages and tuning databases, so the two runs do the same work.
set -u
TRIALS=${1:-40}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CUPY_CACHE_DIR=/tmp/cupy-cache
nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpus.txt"
NGPU=$(nvidia-smi --query-gpu=index --format=csv,noheader | wc -l)
[ "$NGPU" -ge 2 ] || echo "note: $NGPU GPU visible: the two-worker run puts both workers on GPU 0 (bench --workers 1 plus one \`sparse-autotune worker\` joining the same storage)" | tee -a "$OUT/wall.txt"
for K in 1 2; do
    W=/tmp/sat-workers-$K; rm -rf "$W"; mkdir -p "$W"
    t0=$(date +%s.%N)
    KB=$K; [ "$NGPU" -lt "$K" ] && KB=1
    python3 -m sparse_autotune bench --suite quick --trials "$TRIALS" --out "$W/results" \
        --db "$W/tuning.sqlite" --storage "sqlite:///$W/storage.sqlite" --workers "$KB" \
        > "$OUT/bench-quick-workers$K.json" 2> "$OUT/bench-quick-workers$K.log" &
    BP=$!
    if [ "$KB" -lt "$K" ]; then  # one GPU: the second worker joins from another process on the same GPU
        sleep 5
        python3 -m sparse_autotune worker --storage "sqlite:///$W/storage.sqlite" --db "$W/tuning.sqlite" \
            2> "$OUT/extra-worker-workers$K.log"
        echo "extra worker rc=$?"
    fi
    wait $BP; rc=$?
    t1=$(date +%s.%N)
    wall=$(python3 -c "print(f'{$t1 - $t0:.1f}')")
    echo "workers=$K rc=$rc wall_s=$wall" | tee -a "$OUT/wall.txt"
    python3 -m sparse_autotune status --storage "sqlite:///$W/storage.sqlite" > "$OUT/status-workers$K.txt" 2>&1
    cp "$W"/results/suite-quick-* "$OUT/" 2>/dev/null
    for f in "$OUT"/suite-quick-*.json "$OUT"/suite-quick-*.md "$OUT"/suite-quick-*.png; do
        [ -e "$f" ] && case "$f" in *-workers[12].*) ;; *) mv "$f" "${f%.*}-workers$K.${f##*.}";; esac
    done
    tail -3 "$OUT/bench-quick-workers$K.log"
done
cat "$OUT/wall.txt"
