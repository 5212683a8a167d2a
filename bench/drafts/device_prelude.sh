# Sourced by the session call scripts in bench/drafts (bash, from the project's root, on the device, .whl carried):
# the carried wheels onto PYTHONPATH, $O (= $OUT) made, the GPU's name and driver in $O/gpu.txt.
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 2
O=${OUT:-/tmp/out}
mkdir -p "$O"
nvidia-smi --query-gpu=name,driver_version --format=csv | tee "$O/gpu.txt"
# pack_out NAME KEEP...: everything directly under $O but gpu.txt and the KEEP files into $O/NAME.tgz (the device tool
# brings back at most 8 files), then list $O
pack_out() {
    local name=$1 rest keep=(! -name gpu.txt) k
    shift
    for k in "$@"; do keep+=(! -name "$k"); done
    rest=$(cd "$O" && find . -mindepth 1 -maxdepth 1 "${keep[@]}")
    if [ -n "$rest" ]; then (cd "$O" && tar czf "../$name.tgz" $rest && rm -rf $rest && mv "../$name.tgz" .); fi
    ls -la "$O"
}
