# Sourced by the session call scripts in bench/drafts (bash, from the project's root, on the device, .whl carried):
# the carried wheels onto PYTHONPATH, $O (= $OUT) made, the GPU's name and driver in $O/gpu.txt.
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 2
O=${OUT:-/tmp/out}
mkdir -p "$O"
nvidia-smi --query-gpu=name,driver_version --format=csv | tee "$O/gpu.txt"
