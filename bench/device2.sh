#!/usr/bin/env bash
# bench/device2.sh: bench/device.sh on the two GPUs of one machine at once (the device kind nvidia-h200-x2: two GPUs
# for the same device minutes as one). Run it on the lent machine, in the project's root, with .whl carried.
#
#   bench/device2.sh STEPS0 :: STEPS1        GPU 0 runs STEPS0, GPU 1 runs STEPS1 (each bench/device.sh's steps,
#                                            joined by '+'), at the same time
#   bench/device2.sh --plan STEPS0 :: STEPS1 check both sides and print what would run (no GPU needed)
#
# e.g. (device tool) carry [".whl", "bench/state"], command:
#   bench/device2.sh suite llm + probe linear --layers L.npz :: tests tests/families -m gpu
#
# Each side is its own runner: CUDA_VISIBLE_DEVICES=i, OUT=$OUT/gpu<i> (its logs, results and state/), STATE=
# $STATE/gpu<i> (default bench/state/gpu<i>: a suite's state resumes per side), its own kernel cache (from $STATE/gpu<i>/cupy-cache.tgz, or the other side's when only one is carried) and tuning
# database, and half of the CPU cores (taskset), so that one side's compiling does not slow the other's timing. The
# carried wheels are installed once, before both start. Each side's output is in $OUT/gpu<i>.log; the exit status is
# the first failing side's.
set -u
cd "$(dirname "$0")/.." || exit 2
PROG=bench/device2.sh
die() { echo "$PROG: error: $*" >&2; exit 2; }
PLAN=()
if [ "${1:-}" = --plan ]; then PLAN=(--plan); shift; fi
usage() { sed -n '2,/^set -u$/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
case "${1:-}" in -h|--help) usage; exit 0;; "") usage >&2; exit 2;; esac
S0=() S1=() side=0
for a in "$@"; do
    if [ "$a" = :: ]; then
        [ $side = 0 ] || die "one '::' only (STEPS0 :: STEPS1)"
        side=1
    elif [ $side = 0 ]; then S0+=("$a"); else S1+=("$a"); fi
done
[ $side = 1 ] && [ ${#S0[@]} -gt 0 ] && [ ${#S1[@]} -gt 0 ] || die "give the steps of both GPUs: STEPS0 :: STEPS1"
plans=()
for s in 0 1; do  # both sides checked before anything runs (or is printed)
    eval "steps=(\"\${S$s[@]}\")"
    out=$(bash bench/device.sh --plan "${steps[@]}" 2>&1) || die "GPU $s: ${out#bench/device.sh: error: }"
    plans+=("$(echo "$out" | sed "s/^/GPU $s: /")")
done
if [ ${#PLAN[@]} = 1 ]; then printf '%s\n' "${plans[@]}"; exit 0; fi

export OUT=${OUT:-/tmp/out}
STATE=${STATE:-bench/state}
mkdir -p "$OUT" || die "cannot create OUT=$OUT"
WHEELS=${WHEELS:-.whl}
if compgen -G "$WHEELS/*.whl" >/dev/null; then  # once for both runners (two pip installs into one folder race)
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$WHEELS"/*.whl \
        || die "installing the carried wheels ($WHEELS/) failed"
    export PYTHONPATH=/tmp/site
fi
CORES=$(nproc)
HALF=$(( CORES / 2 ))
pids=()
for s in 0 1; do
    eval "steps=(\"\${S$s[@]}\")"
    first=$(( s * HALF )) last=$(( s * HALF + HALF - 1 ))
    [ "$HALF" -ge 1 ] || { first=0; last=$(( CORES - 1 )); }
    cache=$STATE/gpu$s/cupy-cache.tgz  # one carried kernel cache serves both sides (the carry limit holds one)
    [ -e "$cache" ] || cache=$STATE/gpu$(( 1 - s ))/cupy-cache.tgz
    (
        export CUDA_VISIBLE_DEVICES=$s OUT=$OUT/gpu$s STATE=$STATE/gpu$s WHEELS=/nonexistent CACHE_TGZ=$cache \
            CUPY_CACHE_DIR=/tmp/sat-cupy-cache-gpu$s SPARSE_AUTOTUNE_DB=/tmp/sat-gpu$s/tuning.sqlite
        exec taskset -c "$first-$last" bash bench/device.sh "${steps[@]}"
    ) > "$OUT/gpu$s.log" 2>&1 &
    pids+=($!)
done
rc=0
for s in 0 1; do
    wait "${pids[$s]}"; r=$?
    echo "GPU $s: exit $r ($OUT/gpu$s.log)"
    tail -n 4 "$OUT/gpu$s.log" | sed "s/^/  /"
    [ $rc != 0 ] || rc=$r
done
exit $rc
