#!/usr/bin/env bash
# MobileGen3D on a real capture, on the (offline) GPU machine through the device tool, in two calls on one warm machine
# (the trials stay in /tmp between the calls; carry .whl and the capture):
#   bash scripts/bench/gpu_mobilegen3d.sh teacher DATAROOT [TRAIN_TIME=00:00:02:20] [N_PSEUDO=3000]
#   bash scripts/bench/gpu_mobilegen3d.sh student [STUDENT_TIME=00:00:08:00]   (MG_BENCH=0: leave out the bench)
#   bash scripts/bench/gpu_mobilegen3d.sh bench
# "teacher": gaussian-capture.yaml on DATAROOT at downscale 4, N_PSEUDO pseudo views of it at 512 px on the long side,
# then nerf-capture.yaml the same way (the held-out test frames of both, next to the ground truth, go to $OUT).
# "student": nelf-student.yaml on the pseudo views for STUDENT_TIME of training (PSNR vs the teacher and vs the real
# held-out photos over time), then bench_nelf.py: frame times (CUDA fp16/fp32, onnxruntime CPU with 1 thread and all
# cores, the teacher at the same size) and PSNR vs the teacher. Logs, CSV and JSON go to $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
STAGE=${1:?usage: gpu_mobilegen3d.sh teacher DATAROOT [TIME] [N] | student [TIME]}; shift
RUNS=${MG_RUNS:-/tmp/mg_runs}; PSEUDO=${MG_PSEUDO:-/tmp/mg_pseudo}
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:${PYTHONPATH:-} || exit 1
fi
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16}
export THREESTUDIO_CACHE=${THREESTUDIO_CACHE:-/tmp/tscache}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
quiet() { grep -v -E "^\[torch\]|it/s\]|s/it\]" || true; }
newest() { ls -dt "$RUNS/$1"/*/ 2>/dev/null | head -1; }
frames() {  # the held-out test frames (render | ground truth grids) and metrics of the newest trial of $1
  local t; t=$(newest "$1"); [ -n "$t" ] || { echo "no $1 trial"; return; }
  mkdir -p "$OUT/$1"; cp "$t"/save/metrics.json "$t"/save/psnr_vs_time.csv "$OUT/$1/" 2>/dev/null
  local d; d=$(ls -d "$t"/save/it*-test 2>/dev/null | tail -1)
  [ -n "$d" ] && cp "$d"/0.png "$d"/3.png "$OUT/$1/" 2>/dev/null
  echo "$1 trial: $t"; cat "$t"/save/metrics.json 2>/dev/null | head -c 600; echo
}
case "$STAGE" in
teacher)
  DATAROOT=${1:?DATAROOT}; TT=${2:-00:00:02:20}; N=${3:-3000}
  t0=$(date +%s)
  python3 -c "import gsplat; from gsplat.cuda._backend import _C; print('gsplat', gsplat.__version__, _C is not None)" \
    2>&1 | tail -1
  echo "gsplat build+load: $(( $(date +%s) - t0 )) s"
  train() {  # $1: recipe
    local t; t=$(date +%s)
    python3 launch.py --config configs/$1.yaml --train data.dataroot="$DATAROOT" data.downscale=4 \
      exp_root_dir="$RUNS" trainer.max_time="$TT" trainer.enable_progress_bar=false 2>&1 | quiet \
      | tail -25 > "$OUT/$1.log"
    echo "== $1: $(( $(date +%s) - t )) s in all"; tail -6 "$OUT/$1.log"
    frames "$1"
  }
  train gaussian-capture
  t=$(date +%s)
  python3 custom/mobilegen3d/scripts/make_pseudo_data.py --teacher "$(newest gaussian-capture)" --out "$PSEUDO" \
    --n "$N" --overwrite 2>&1 | quiet | tail -8
  echo "pseudo data: $(( $(date +%s) - t )) s, $(du -sh "$PSEUDO" | cut -f1)"; head -c 800 "$PSEUDO"/pseudo.json; echo
  train nerf-capture  # last: its held-out frames are for the README only
  ;;
student)
  ST=${1:-00:00:08:00}
  t=$(date +%s)
  python3 launch.py --config custom/mobilegen3d/configs/nelf-student.yaml --train data.dataroot="$PSEUDO" \
    data.photos_trial=source exp_root_dir="$RUNS" trainer.max_time="$ST" trainer.val_check_interval=500 \
    trainer.enable_progress_bar=false 2>&1 | quiet | tail -30 > "$OUT/nelf-student.log"
  echo "== student: $(( $(date +%s) - t )) s in all"; tail -8 "$OUT/nelf-student.log"
  s=$(newest nelf-student)
  mkdir -p "$OUT/nelf-student"; cp "$s"/save/metrics.json "$s"/save/psnr_vs_time.csv "$OUT/nelf-student/" 2>/dev/null
  cat "$s"/save/psnr_vs_time.csv
  d=$(ls -d "$s"/save/it*-test 2>/dev/null | tail -1); [ -n "$d" ] && cp "$d"/0.png "$OUT/nelf-student/" 2>/dev/null
  d=$(ls -d "$s"/save/it*-test-photos 2>/dev/null | tail -1); [ -n "$d" ] && cp "$d"/0.png "$OUT/nelf-student/photo0.png"
  [ "${MG_BENCH:-1}" = 1 ] && bash "$0" bench
  ;;
bench)
  python3 scripts/bench/bench_nelf.py --ckpt "$(newest nelf-student)"ckpts/last.ckpt --pseudo "$PSEUDO" --n-views 0 \
    --teacher "$(newest gaussian-capture)" --json "$OUT/nelf_bench.json" 2>&1 | quiet | tail -15
  ;;
*) echo "unknown stage $STAGE"; exit 2;;
esac
