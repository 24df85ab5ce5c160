#!/usr/bin/env bash
# The real-capture checks on a GPU machine (through the device tool, with .whl and the capture carried):
#   bash scripts/bench/gpu_capture.sh DATAROOT "DOWNSCALES" [extra bench_capture.py args ...]
# Installs the carried wheels, runs the capture GPU tests, then bench_capture.py (warm-up first, so gsplat's CUDA
# build and the Triton kernels are not timed) for each downscale. Logs and JSON go to $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
DATAROOT=${1:-.gpu/fox}; DOWNSCALES=${2:-4}; shift 2 || true
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:${PYTHONPATH:-} || exit 1
fi
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16}
export THREESTUDIO_CACHE=${THREESTUDIO_CACHE:-/tmp/tscache}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
t0=$(date +%s)
python3 -c "import torch, gsplat; from gsplat.cuda._backend import _C; print('gsplat', gsplat.__version__, 'built:', _C is not None)" 2>&1 | tail -1
echo "gsplat build+load: $(( $(date +%s) - t0 )) s"
warm=--warmup
for ds in $DOWNSCALES; do
  python3 scripts/bench/bench_capture.py --dataroot "$DATAROOT" --downscale "$ds" $warm --json "$OUT/capture_ds$ds.json" \
    --exp-root /tmp/capture_runs "$@" 2>&1 | tee "$OUT/capture_ds$ds.log" | grep -v "^\[torch\]"
  warm=
done
