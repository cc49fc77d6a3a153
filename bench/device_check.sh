#!/usr/bin/env bash
# The one prepared GPU check, for a session lent the device machine (one H200, 15 minutes in all).
# Prepare once on the development machine (the device machine has torch, cv2, tqdm, yaml, skimage
# but not yacs):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl yacs==0.1.8     # yacs is pure Python: any wheel works
# then run it once:  run(command="bash bench/device_check.sh", carry=[".whl"], timeout_s=540)
# What comes back: $OUT/bench_cuda.json (the README's GPU figures) and $OUT/device_check.log.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/device_out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
    timeout 120 python3 bench/device_consistency.py --device cuda
    timeout 120 python3 -m pytest -q -x tests/test_search_1m.py tests/test_rerank.py -p no:cacheprovider
    timeout 300 python3 bench/run.py --device cuda --skip onemeval --json "$OUT/bench_cuda.json"
    timeout 180 python3 bench/onemeval.py --sizes 1000000 --device cuda --json "$OUT/onemeval_cuda.json"
} 2>&1 | tee "$OUT/device_check.log"
