# Sourced by the drafts' one-command device calls (ts_device_call.sh, rw_device_call.sh), after `cd` to the project's
# root and with LOGS set (the folder each step's log goes to): installs the carried wheels (.whl/), sets PYTHONPATH and
# defines step NAME LIMIT_S COMMAND... (runs it under a timeout, logs to $LOGS/NAME.log, prints the log's tail, counts
# a failure in $fail).
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl >/dev/null 2>&1 \
    || { echo "installing the carried wheels (.whl/) failed: carry [\".whl\"]"; exit 2; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
fail=0
step() {
    local name=$1 limit=$2
    shift 2
    echo "== $name ($(date -u +%T))"
    timeout "$limit" "$@" >"$LOGS/$name.log" 2>&1
    local rc=$?
    tail -n "${TAIL:-25}" "$LOGS/$name.log"
    [ $rc -eq 0 ] || { echo "== $name: exit $rc"; fail=$((fail + 1)); }
}
