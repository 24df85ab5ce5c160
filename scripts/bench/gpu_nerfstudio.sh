#!/usr/bin/env bash
# nerfstudio 1.1.5 nerfacto / splatfacto on a capture, on the (offline) GPU machine, as the reference rows for
# scripts/bench/bench_capture.py --nerfstudio-results. The wheels nerfstudio needs there (7.7 MiB, Python 3.12):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 -d .gpu/nerfstudio/wheels -r scripts/bench/nerfstudio_wheels.txt
# Through the device tool, carrying the wheels and the capture:
#   carry [".gpu/nerfstudio", ".gpu/fox"]; command: bash scripts/bench/gpu_nerfstudio.sh .gpu/fox splatfacto
#   bash scripts/bench/gpu_nerfstudio.sh DATAROOT [METHODS="splatfacto nerfacto"] [SECONDS=180] [DOWNSCALE=4] [EVERY=20]
# One method per call fits the 600 s per-call limit (splatfacto ~330 s with gsplat's build, nerfacto ~400 s: its
# PyTorch hash grid makes each evaluation slow); the driver stops training early (--max-wall-seconds, JSON
# "stopped_by") rather than be killed. Writes $OUT/ns_<method>.json (+ .log) and $OUT/nerfstudio_results.json
# (a list of every ns_*.json in $OUT, the format --nerfstudio-results reads).
# nerfstudio's closure goes to its own --target dir, which is the ONLY entry on PYTHONPATH for these runs (the
# project's /tmp/site holds gsplat 1.5.3 / nerfacc 0.5.3, which must not mix with nerfstudio's pinned 1.4.0 / 0.5.2),
# and gsplat 1.4.0 builds into its own TORCH_EXTENSIONS_DIR (both gsplats name their extension gsplat_cuda).
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
DATAROOT=${1:?usage: run.sh DATAROOT [METHODS] [SECONDS] [DOWNSCALE] [EVERY]}
METHODS=${2:-"splatfacto nerfacto"}; SECS=${3:-180}; DS=${4:-4}; EVERY=${5:-20}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd); WHEELS=${NS_WHEELS:-$REPO/.gpu/nerfstudio/wheels}
WALL=${NS_MAX_WALL:-560}   # seconds for the whole call, install and builds included (the device tool allows 600)
T0=$(date +%s)
NS_SITE=${NS_SITE:-/tmp/ns_site}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$NS_SITE" \
  "$WHEELS"/*.whl || exit 1
export PYTHONPATH="$NS_SITE" TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/ns_torch_ext}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 WANDB_MODE=disabled
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, nerfstudio, gsplat, nerfacc, importlib.metadata as m; print('torch', torch.__version__, \
'| nerfstudio', m.version('nerfstudio'), '| gsplat', gsplat.__version__, '| nerfacc', nerfacc.__version__, \
'| tinycudann:', __import__('importlib').util.find_spec('tinycudann') is not None)"
cd "$REPO"
for m in $METHODS; do
  if [ "$m" = splatfacto ]; then  # gsplat 1.4.0's one-time CUDA build (JIT, ~1-2 min), not timed
    t=$(date +%s)
    if ! python3 -c "from gsplat.cuda._backend import _C; assert _C is not None" > "$OUT/gsplat140_build.log" 2>&1; then
      echo "gsplat 1.4.0 did not build (tail of $OUT/gsplat140_build.log below)"; tail -20 "$OUT/gsplat140_build.log"
      g153=$(ls "$REPO"/.whl/gsplat-1.5.3-*.whl 2>/dev/null | head -1)
      if [ -n "$g153" ]; then  # fallback: the project's gsplat 1.5.3 (API-compatible; its DefaultStrategy never
        # resets opacities, see threestudio/ops/splatting/densify.py) -- the JSON's "gsplat" field records it
        echo "FALLBACK: splatfacto with gsplat 1.5.3 from $g153"
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/ns_gsplat153 "$g153"
        export PYTHONPATH="/tmp/ns_gsplat153:$NS_SITE"; unset TORCH_EXTENSIONS_DIR  # reuse the project's 1.5.3 build
        python3 -c "from gsplat.cuda._backend import _C; assert _C is not None" 2>&1 | tail -5
      fi
    fi
    echo "gsplat build+load: $(( $(date +%s) - t )) s"
  fi
  left=$(( WALL - ($(date +%s) - T0) ))
  echo "== $m: ${SECS} s of training, eval every ${EVERY} s, ${left} s of wall time left"
  timeout $(( left + 20 )) python3 scripts/bench/nerfstudio_capture.py --data "$DATAROOT" --method "$m" \
    --downscale "$DS" --seconds "$SECS" --eval-every-seconds "$EVERY" --max-wall-seconds "$left" \
    --scratch /tmp/nerfstudio_capture --out "$OUT/ns_$m.json" 2>&1 | tee "$OUT/ns_$m.log" \
    | grep -E "^step |^nerfstudio-|^held-out|Error|error|Traceback|WARNING" | grep -v "UserWarning"
done
python3 - "$OUT" <<'PY'
import glob, json, os, sys
rows = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(sys.argv[1], "ns_*.json")))]
json.dump(rows, open(os.path.join(sys.argv[1], "nerfstudio_results.json"), "w"), indent=1)
for r in rows:
    print(f"{r['method']}: PSNR {r['psnr']} SSIM {r['ssim']} train {r['train_time_s']} s, {r['steps']} steps, "
          f"stopped_by {r.get('stopped_by')}, partial {r.get('partial')}")
PY
echo "total: $(( $(date +%s) - T0 )) s"
