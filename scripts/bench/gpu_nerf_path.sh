#!/usr/bin/env bash
# The NeRF path's GPU checks and benchmarks in one go (used through the device tool; needs $OUT):
# gpu tests of the ops, the hash-grid benchmark, the quick-start scene at 256^2 (fast vs torch backends), and the
# quick-start recipe end to end through launch.py.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
t0=$(date +%s)
python3 -c "import torch, nerfacc; print('nerfacc JIT:', nerfacc.pack_info(torch.zeros(4, dtype=torch.long, device='cuda'), 2).tolist())" 2>&1 | tail -1
echo "nerfacc build+load: $(( $(date +%s) - t0 )) s"
python3 -m pytest -q -m gpu tests/ops -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.log" | tail -4
python3 scripts/bench/bench_hashgrid.py --variants naive,default --json "$OUT/hashgrid.json" 2>&1 | tee "$OUT/hashgrid.log" | tail -22
python3 scripts/bench/bench_nerf_quickstart.py --dataroot "${SCENE256:-.gpu/data/quickstart-256}" --json "$OUT/nerf.json" \
  --rays 8192 --time-limit "${NERF_TIME:-60}" --max-steps 1000 --eval-every 25 --resolution 256 \
  system.geometry.pos_encoding_config.n_levels=16 system.geometry.pos_encoding_config.log2_hashmap_size=19 \
  system.geometry.pos_encoding_config.max_resolution=1024 system.renderer.num_samples_per_ray=256 \
  2>&1 | tee "$OUT/nerf.log" | grep -v "^\[torch\]" | tail -14
t0=$(date +%s)
python3 launch.py --config configs/quickstart.yaml --train exp_root_dir=/tmp/qs 2>&1 | tee "$OUT/quickstart.log" | grep -E "PSNR|Exported|Error|error" | tail -5
echo "quickstart on GPU (launch.py, incl. scene generation and export): $(( $(date +%s) - t0 )) s"
