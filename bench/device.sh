#!/usr/bin/env bash
# bench/device.sh: the one device runner. Run it on the lent GPU machine, in the project's root, with .whl carried
# (../shared/device/README.md: `bash ../shared/device/wheels.sh` here once per session). One call runs one or more
# steps joined by `+`; logs and results land under $OUT (default /tmp/out).
#
#   bench/device.sh tests [PYTEST ARGS]     the GPU tests (default `-m gpu`) -> $OUT/pytest-gpu-<gpu>[-k].log
#                                           (-q unless ARGS has -v or xdist's -n: `tests -m gpu -n 8` names each test)
#   bench/device.sh suite dl|quick|llm [--budget S] [--workers W] [--trials T] [--fresh] [--shard I/N] [--retry-failed]
#                     [--retune F=V,V ...] [--retune-trials T] [--only F=V,V ...] [--families A,B]
#                                           run or resume a benchmark suite (`sparse-autotune bench`) from its state
#   bench/device.sh suite search [--budget S] [--fresh] [--problems A,B]
#                                           the search benchmark's measure phase (`bench --suite search --measure-only`,
#                                           one process), resumed from its table; replay it on a CPU afterwards.
#                                           --problems: only those (two GPUs: one runner per GPU, each with its own
#                                           CUDA_VISIBLE_DEVICES, OUT and STATE; the tables merge at replay)
#   bench/device.sh probe SUBCOMMAND [ARGS] bench/probe.py (ab, sweep, config, profile, baselines, overhead, sddmm, ...)
#   bench/device.sh minilm [ARGS]           examples/minilm/device.py --out $OUT (carry examples/minilm/data too)
#   bench/device.sh cli ARGS                python3 -m sparse_autotune ARGS -> $OUT/cli-<i>-<command>.{out,err}
#   bench/device.sh --plan STEPS            check the steps and print what would run (no GPU needed)
#
# e.g. (device tool) carry [".whl", "bench/state"], command:
#   bench/device.sh tests + probe profile --case 768x3072:512:0.05:fp32 --db db/h100-80gb-hbm3.sqlite --ncu + suite dl
#
# Time: each step gets what is left of CALL_S seconds (default 600, the per-call limit) minus a margin, so the logs
# and the suite's state are written before the call is cut. A step that fails does not stop the next ones; the
# exit status is the first failing step's (2: bad arguments, before anything ran).
#
# Suites resume. A suite's state (Optuna storage, tuning DB, results so far, logs) is read from
# $STATE/suite-<name>.tgz and the compiled-kernel cache from $STATE/cupy-cache.tgz when carried (STATE defaults
# to bench/state), and written back to $OUT/state/ at the end of the step: copy those two files into bench/state/
# here (git-ignored) and carry bench/state in the next call to go on. --fresh starts from nothing. The suite's
# report so far (suite-<name>-<gpu>.{json,md,png}) is also copied to $OUT/results/, for bench/results/.
#   --budget S    start no new case after S seconds (default: the time left minus 110 s); the step is stopped
#                 hard 90 s later (at most 15 s before the call's end) and its state packed whatever the workers do
#   --workers W   processes sharing the GPU(s) through one SQLite storage on tmpfs (default min(12, CPUs))
#   --trials T    trial budget per case (default 20 for dl, as in bench/results/suite-dl-*, else 40)
#   --retry-failed  the failed cases (workers lost 3 times) of this side's share go back to the queue first
#   --retune F=V,V  (repeatable, all must hold; F one of M K N density dtype pattern) `bench --retune`: the matching
#                 cases' searches opened again with --retune-trials T more trials (default 20), e.g. after a kernel
#                 change; resumes like the suite
#   --only F=V,V  (repeatable, all must hold) `bench --only`: only the matching cases, from nothing (a fresh state, e.g.
#                 after a family was enabled); join the report with the earlier one here: `bench --merge NEW OLD --first-wins`
#   --families A,B  `bench --families`: the kernel families every case searches (default the enabled ones), e.g. a
#                 disabled family measured with --only before it is enabled (join: `bench --merge NEW OLD --fastest-wins`)
#   --shard I/N   only every N-th case from the I-th (`bench --shard`): with bench/device2.sh each GPU resumes its own
#                 state (bench/state/gpu<i>), so give GPU i shard i/2 in every call (start both sides from one copy of
#                 the state); join the two sides' suite-*.json here with `sparse-autotune bench --suite S --merge A B`
set -u
cd "$(dirname "$0")/.." || exit 2
PROG=bench/device.sh
die() { echo "$PROG: error: $*" >&2; exit 2; }
usage() { sed -n '2,/^set -u$/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

# ---- the steps: "$@" split at '+' and checked before anything runs ----
[ $# -gt 0 ] || { usage >&2; exit 2; }
case "$1" in -h|--help) usage; exit 0;; esac
PLAN=0
if [ "$1" = --plan ]; then PLAN=1; shift; fi
ARGS=("$@")
STARTS=(0)
for i in "${!ARGS[@]}"; do [ "${ARGS[$i]}" = + ] && STARTS+=($((i + 1))); done
STARTS+=($(( ${#ARGS[@]} + 1 )))
step_args() {  # step_args K: the words of step K (into STEP)
    local from=${STARTS[$1]} to=${STARTS[$(($1 + 1))]}
    STEP=("${ARGS[@]:$from:$((to - from - 1))}")
}
NSTEPS=$(( ${#STARTS[@]} - 1 ))
is_num() { [[ "$1" =~ ^[0-9]+([.][0-9]+)?$ ]]; }
check_suite() {  # NAME [--budget S] [--workers W] [--trials T] [--fresh]
    [ $# -ge 1 ] && [[ "$1" =~ ^[a-z0-9_-]+$ ]] || die "suite: name a suite (dl, quick, llm, search ...)"
    local name=$1
    shift
    while [ $# -gt 0 ]; do
        case "$1" in
            --budget|--workers|--trials)
                [ "$name" != search ] || [ "$1" = --budget ] || die "suite search: $1 does not apply (--budget S, --fresh, --problems A,B)"
                [ $# -ge 2 ] && is_num "$2" || die "suite: $1 needs a number"; shift 2;;
            --problems)
                [ "$name" = search ] || die "suite $name: --problems applies to suite search only"
                [ $# -ge 2 ] && [[ "$2" =~ ^[a-z0-9_,.-]+$ ]] || die "suite search: --problems needs comma-separated names"
                shift 2;;
            --fresh) shift;;
            --retry-failed) [ "$name" != search ] || die "suite search: --retry-failed does not apply"; shift;;
            --retune|--retune-trials|--only)
                [ "$name" != search ] || die "suite search: $1 does not apply"
                [ $# -ge 2 ] || die "suite: $1 needs a value"
                [ "$1" != --retune-trials ] && { [[ "$2" =~ ^[A-Za-z]+=[A-Za-z0-9.,]+$ ]] || die "suite: $1 needs FIELD=V1,V2, e.g. N=16,32"; }
                [ "$1" = --retune-trials ] && { is_num "$2" || die "suite: --retune-trials needs a number"; }
                shift 2;;
            --families)
                [ "$name" != search ] || die "suite search: --families does not apply"
                [ $# -ge 2 ] && [[ "$2" =~ ^[a-z0-9_,]+$ ]] || die "suite: --families needs comma-separated names"
                shift 2;;
            --shard)
                [ "$name" != search ] || die "suite search: --shard does not apply (use --problems A,B)"
                [ $# -ge 2 ] && [[ "$2" =~ ^[0-9]+/[0-9]+$ ]] || die "suite: --shard needs I/N, e.g. 0/2"; shift 2;;
            *) die "suite: unknown option '$1' (--budget S, --workers W, --trials T, --fresh, --problems A,B, --shard I/N, --retune F=V,V, --retune-trials T, --only F=V,V, --families A,B)";;
        esac
    done
}
for ((k = 0; k < NSTEPS; k++)); do
    step_args $k
    [ ${#STEP[@]} -gt 0 ] || die "empty step (a '+' with nothing after or before it)"
    case "${STEP[0]}" in
        tests|minilm) ;;
        probe) [ ${#STEP[@]} -ge 2 ] || die "probe: name a subcommand (ab, sweep, config, profile, baselines, overhead, untuned, linear, sddmm)";;
        cli) [ ${#STEP[@]} -ge 2 ] || die "cli: give the sparse-autotune command, e.g. cli tune --shape 512x2048 --density 0.1";;
        suite) check_suite "${STEP[@]:1}";;
        *) die "unknown step '${STEP[0]}' (tests, suite, probe, minilm, cli; see bench/device.sh --help)";;
    esac
done
if [ "$PLAN" = 1 ]; then
    for ((k = 0; k < NSTEPS; k++)); do step_args $k; echo "step $((k + 1)): ${STEP[*]}"; done
    exit 0
fi

# ---- the preamble: carried wheels, environment, the GPU ----
export OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" || die "cannot create OUT=$OUT"
T0=$(date +%s)
START=$(date -u +%Y%m%dT%H%M%SZ)  # names this call's logs
CALL_S=${CALL_S:-600}
left() { echo $(( CALL_S - ($(date +%s) - T0) )); }
el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
WHEELS=${WHEELS:-.whl}  # the carried wheels (another folder, or none, where the packages are installed already)
if compgen -G "$WHEELS/*.whl" >/dev/null; then  # exactly as ../shared/device/README.md says
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$WHEELS"/*.whl && export PYTHONPATH=/tmp/site:$PWD || die "installing the carried wheels ($WHEELS/) failed"
else
    python3 -c "import optuna, sqlalchemy" 2>/dev/null \
        || die "no wheels carried: run 'bash ../shared/device/wheels.sh' here and carry [\".whl\"]"
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export CUPY_CACHE_DIR=${CUPY_CACHE_DIR:-/tmp/sat-cupy-cache}
export SPARSE_AUTOTUNE_DB=${SPARSE_AUTOTUNE_DB:-/tmp/sat/tuning.sqlite}  # never the user cache of the machine
mkdir -p "$CUPY_CACHE_DIR" "$(dirname "$SPARSE_AUTOTUNE_DB")"
STATE=${STATE:-bench/state}
CACHE_TGZ=${CACHE_TGZ:-$STATE/cupy-cache.tgz}  # bench/device2.sh: the other side's when this side carries none
if [ -e "$CACHE_TGZ" ] && [ -z "$(ls -A "$CUPY_CACHE_DIR")" ]; then
    tar xzf "$CACHE_TGZ" -C "$CUPY_CACHE_DIR" --strip-components=1 \
        && el "kernel cache: $(find "$CUPY_CACHE_DIR" -type f | wc -l) files from $CACHE_TGZ"
fi
nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader > "$OUT/gpu.txt" 2>&1
# the device the tuner works on: this GPU (or a test tuner's stand-in named by $SPARSE_AUTOTUNE_TUNER, no GPU)
GPU_INFO=$(python3 -c "
from sparse_autotune.device.gpu import gpu_info, gpu_slug
from sparse_autotune.tuning.tuner import GpuTuner, tuner_class
tuner = tuner_class()
print(gpu_slug(tuner.device_name()))
if tuner is GpuTuner:
    v = gpu_info().versions()
    print(f\"{v['gpu']}, driver {v['driver']}, CUDA {v['cuda']}, CuPy {v['cupy']}\")
else:
    print(f'{tuner.device_name()} (test tuner {tuner.__module__}:{tuner.__name__}, no GPU)')" 2>&1) \
    || die "no usable GPU: $(echo "$GPU_INFO" | tail -1)"
SLUG=$(echo "$GPU_INFO" | head -1)
VERSIONS=$(echo "$GPU_INFO" | sed -n 2p)
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo "no git")
# the device's copy carries the working tree, but its .git may be the session's first: say so when the tree differs
[ "$COMMIT" = "no git" ] || git diff --quiet HEAD -- 2>/dev/null || COMMIT="$COMMIT + working-tree changes"
echo "$VERSIONS; $(nproc) CPUs; checkout $COMMIT" | tee -a "$OUT/gpu.txt"

# ---- the steps ----
step_tests() {
    local log="$OUT/pytest-gpu-$SLUG.log" lim=$(( $(left) - 20 )) args=("$@") rc k=1
    while [ -e "$log" ]; do k=$((k + 1)); log="$OUT/pytest-gpu-$SLUG-$k.log"; done  # a second tests step: its own log
    [ ${#args[@]} -gt 0 ] || args=(-m gpu)
    [ "$lim" -gt 30 ] || { el "tests: no time left"; return 1; }
    # -q unless the caller asks for -v, or spreads the tests over xdist's workers (-n W): a verbose log names each test
    # as it ends, so a run cut by the call's limit still says which tests passed and which failed (session 61: a quiet
    # -n 12 run cut at 568 s showed one F and no name); -q given with -n keeps it quiet
    local q=(-q) a xd=0 quiet=0
    for a in "${args[@]}"; do case "$a" in -v*) q=();; -n|-n[0-9]*|--numprocesses*) xd=1;; -q) quiet=1;; esac; done
    [ $xd = 1 ] && [ $quiet = 0 ] && [ ${#q[@]} -gt 0 ] && q=(-v)
    {
        echo "$VERSIONS; $(date -u +%F); checkout $COMMIT"
        echo "python3 -m pytest ${q[*]} -p no:cacheprovider --durations=8 ${args[*]}"
    } > "$log"
    timeout -k 5 "$lim" python3 -m pytest "${q[@]}" -p no:cacheprovider --durations=8 "${args[@]}" >> "$log" 2>&1
    rc=$?
    [ $rc = 124 ] && echo "(stopped by the call's time limit after $lim s)" >> "$log"
    tail -3 "$log"
    return $rc
}

step_suite() {
    local name=$1 budget="" workers="" trials="" fresh=0 rc problems=() shard=()
    shift
    while [ $# -gt 0 ]; do
        case "$1" in
            --budget) budget=$2; shift 2;; --workers) workers=$2; shift 2;; --trials) trials=$2; shift 2;;
            --problems) problems=(--problems "$2"); shift 2;;
            --shard) shard=(--shard "$2"); shift 2;;
            --retry-failed) shard+=(--retry-failed); shift;;
            --retune|--retune-trials|--only|--families) shard+=("$1" "$2"); shift 2;;
            --fresh) fresh=1; shift;;
        esac
    done
    [ -n "$workers" ] || { workers=$(nproc); [ "$workers" -gt 12 ] && workers=12; }
    [ -n "$trials" ] || { trials=40; [ "$name" = dl ] && trials=20; }
    if [ -z "$budget" ]; then
        budget=$(( $(left) - 110 ))
        [ "$budget" -gt 20 ] || { el "suite $name: no time left (budget $budget s)"; return 1; }
    fi
    budget=${budget%.*}
    local hard=$(( budget + 90 )) room=$(( $(left) - 15 ))
    [ "$hard" -le "$room" ] || hard=$room
    [ "$hard" -gt 0 ] || { el "suite $name: no time left"; return 1; }
    local S=/dev/shm/sat-suite-$name-$$
    [ -w /dev/shm ] || S=/tmp/sat-suite-$name-$$  # tmpfs: no fsync per storage commit
    rm -rf "$S"; mkdir -p "$S/out" "$OUT/state" "$OUT/results"
    if [ "$fresh" = 0 ] && [ -e "$STATE/suite-$name.tgz" ]; then
        tar xzf "$STATE/suite-$name.tgz" -C "$S" || { el "suite $name: $STATE/suite-$name.tgz unreadable"; return 1; }
        el "suite $name: resumed from $STATE/suite-$name.tgz ($(ls "$S/out" | tr '\n' ' '))"
    else
        el "suite $name: a fresh start"
    fi
    if [ "$name" = search ]; then
        el "suite search: measure phase, one process, budget $budget s, hard stop at $hard s"
    else
        el "suite $name: $workers workers, $trials trials a case, budget $budget s, hard stop at $hard s"
    fi
    local blog="$S/bench-$START.log"
    # its own process group, so that a hard stop ends bench and every worker it spawned
    if [ "$name" = search ]; then  # one process; its state is the measured table (written whole after every chunk)
        setsid python3 -m sparse_autotune bench --suite search --measure-only --out "$S/out" --db "$S/tuning.sqlite" \
            --budget "$budget" "${problems[@]}" > "$S/out/summary-last.json" 2> "$blog" &
    else
        setsid python3 -m sparse_autotune bench --suite "$name" --trials "$trials" --out "$S/out" --db "$S/tuning.sqlite" \
            --storage "sqlite:///$S/storage.sqlite" --workers "$workers" --heartbeat 5 --budget "$budget" "${shard[@]}" \
            > "$S/out/summary-last.json" 2> "$blog" &
    fi
    local pid=$!
    (  # the hard stop; it holds no output, and ends its sleep when it is ended itself
        exec >/dev/null 2>&1
        sleep "$hard" & s=$!
        trap 'kill $s; exit 0' TERM
        wait $s
        kill -TERM -- "-$pid" && sleep 5
        kill -KILL -- "-$pid"
    ) &
    local dog=$!
    wait "$pid"; rc=$?
    kill "$dog" 2>/dev/null; wait "$dog" 2>/dev/null
    kill -KILL -- "-$pid" 2>/dev/null  # workers left behind must not write while the state is packed
    el "suite $name: bench rc=$rc"
    if [ "$name" = search ]; then
        grep -E "configs \(|interrupted" "$blog" | tail -10 | cut -c1-300
        tail -2 "$blog" | cut -c1-300
    else
        python3 -m sparse_autotune status --storage "sqlite:///$S/storage.sqlite" > "$S/status.txt" 2>&1
        head -12 "$S/status.txt"
        grep -c "problem .* done" "$blog" | sed 's/^/cases finished in this call: /'
    fi
    grep -E "done:|failed|Error|error" "$blog" | tail -8 | cut -c1-300
    ( cd "$S" && tar czf "$OUT/state/suite-$name.tgz" $(ls -d storage.sqlite* tuning.sqlite* out bench-*.log status.txt 2>/dev/null) )
    tar czf "$OUT/state/cupy-cache.tgz" -C "$(dirname "$CUPY_CACHE_DIR")" "$(basename "$CUPY_CACHE_DIR")"
    cp "$S"/out/suite-"$name"-* "$OUT/results/" 2>/dev/null
    [ "$name" != search ] || cp "$S"/out/search-* "$OUT/results/" 2>/dev/null
    cp "$blog" "$OUT/suite-$name-$START.log"
    rm -rf "$S"
    el "suite $name: state in \$OUT/state/ ($(du -ch "$OUT"/state/*.tgz | tail -1 | cut -f1)): copy it to bench/state/ to go on"
    return $rc
}

step_probe() {
    local lim=$(( $(left) - 10 )) rc
    [ "$lim" -gt 10 ] || { el "probe: no time left"; return 1; }
    timeout -k 5 "$lim" python3 bench/probe.py "$@" 2>&1 | tee -a "$OUT/probe-$1.log"
    rc=${PIPESTATUS[0]}
    return $rc
}

step_minilm() {
    local lim=$(( $(left) - 10 )) rc
    [ -d examples/minilm/data ] || { el "minilm: examples/minilm/data not carried (examples/minilm/prepare.py makes it)"; return 2; }
    [ "$lim" -gt 30 ] || { el "minilm: no time left"; return 1; }
    timeout -k 5 "$lim" python3 examples/minilm/device.py --out "$OUT" "$@" > "$OUT/minilm-stdout.json" 2> "$OUT/minilm.log"
    rc=$?
    grep -v "^  batch" "$OUT/minilm.log" | tail -15; grep "^  batch" "$OUT/minilm.log"
    return $rc
}

CLI_N=0
step_cli() {
    local lim=$(( $(left) - 10 )) rc
    CLI_N=$((CLI_N + 1))
    local base="$OUT/cli-$CLI_N-$1"
    [ "$lim" -gt 10 ] || { el "cli: no time left"; return 1; }
    timeout -k 5 "$lim" python3 -m sparse_autotune "$@" > "$base.out" 2> "$base.err"
    rc=$?
    tail -5 "$base.err"; head -c 2000 "$base.out"; echo
    return $rc
}

STATUS=0
for ((k = 0; k < NSTEPS; k++)); do
    step_args $k
    el "step $((k + 1))/$NSTEPS: ${STEP[*]} ($(left) s left)"
    "step_${STEP[0]}" "${STEP[@]:1}"
    rc=$?
    el "step $((k + 1)) rc=$rc"
    [ "$STATUS" = 0 ] && [ "$rc" != 0 ] && STATUS=$rc
done
ls -la "$OUT"
exit "$STATUS"
