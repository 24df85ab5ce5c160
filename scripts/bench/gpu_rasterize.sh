#!/usr/bin/env bash
# The rasterizer bench on the (offline) GPU machine with nvdiffrast built there and timed in the same process:
#   bash scripts/bench/gpu_rasterize.sh NVDIFFRAST_SOURCE [bench_rasterize.py args ...]   (e.g. --host --profile: where
#   the small-mesh time goes: launches on the host, or the kernels)
# NVDIFFRAST_SOURCE is a git-ignored copy of nvdiffrast's source carried with the call (e.g. .gpu/nvdiffrast, copied
# from a checkout of https://github.com/NVlabs/nvdiffrast); it is built into /tmp/nvdiffrast_site, never into the
# project. Carry .whl too (the project's own dependencies). Output: $OUT/rasterize.json and the table.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
SRC=${1:?usage: gpu_rasterize.sh NVDIFFRAST_SOURCE [bench args]}; shift
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:${PYTHONPATH:-} || exit 1
fi
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
t=$(date +%s)
cp -r "$SRC" /tmp/nvdiffrast_src
python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/nvdiffrast_site /tmp/nvdiffrast_src \
  > "$OUT/nvdiffrast_build.log" 2>&1 || { echo "nvdiffrast did not build:"; tail -20 "$OUT/nvdiffrast_build.log"; }
export PYTHONPATH=/tmp/nvdiffrast_site:${PYTHONPATH:-}
python3 -c "import nvdiffrast.torch as dr, torch; dr.RasterizeCudaContext(); print('nvdiffrast', \
__import__('nvdiffrast').__version__, 'ready')" 2>&1 | tail -2
echo "nvdiffrast build + first use: $(( $(date +%s) - t )) s"
python3 scripts/bench/bench_rasterize.py --no-cpu --backends triton --json "$OUT/rasterize.json" "$@" 2>&1 \
  | grep -v "^subdiv"
