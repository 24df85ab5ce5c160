#!/usr/bin/env bash
# Zero-1-to-G end-to-end demo: procedural meshes -> GT splatters (gsplat) -> stage 1 (mix) -> stage 2
# (joint) -> held-out novel-view PSNR of sampled gaussians vs the mean-shape baseline, with reduced random-init
# models (custom/zero1tog/scripts/make_demo_models.py) and no download. On the (offline) GPU machine through the
# device tool (carry .whl; everything stays in $Z1G, default /tmp/z1g, and the CUDA/Triton build caches in /tmp), in
# two calls on one warm machine (it stays 30 s after a call), about 14 GPU-minutes together:
#   bash scripts/bench/gpu_zero1tog_demo.sh train     # <= 10 min: wheels, gsplat build, data, stage 1 until the
#                                                     #   budget Z1G_BUDGET=565 s
#   bash scripts/bench/gpu_zero1tog_demo.sh eval      # ~5 min: stage 2 (Z1G_S2_TIME=180 s) unless done, then
#                                                     #   eval_demo.py at every Z1G_GUIDANCE (the first decides)
#   bash scripts/bench/gpu_zero1tog_demo.sh all       # everything in one call (<= 10 min: less training)
#   bash scripts/bench/gpu_zero1tog_demo.sh --smoke   # CPU: a handful of objects, tiny sizes, the whole chain
#                                                     #   (--smoke train / --smoke eval: the two-call split)
# The demo's model is trained from scratch for minutes: it samples at guidance 1 (the conditional branch alone;
# guidance 3 scored lower on a GPU run and in a CPU trial of the same chain) with eta 1, the authors' sampler
# otherwise.
# Knobs (environment): Z1G_N (320 meshes), Z1G_RES (32), Z1G_FIT_STEPS (100), Z1G_SHARDS (6 fit processes),
# Z1G_DATA_TIME (100 s cap on the fit), Z1G_S1_TIME (stage-1 training: what the budget leaves for "train", 110 s for
# "all"), Z1G_S2_TIME (180 s of stage 2; for "all" cut to what Z1G_BUDGET=480 leaves, keeping ~90 s for the eval),
# Z1G_GUIDANCE (1; e.g. 1,3 adds a CFG-3 column at ~1.5x the eval time), Z1G_STEPS (50 DDIM steps).
# $OUT gets at most 6 files: demo.log (everything), eval_demo.json, eval_grid.png, eval.log, timings_<mode>.txt;
# the per-step logs stay in $Z1G/logs.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
MODE=${1:-train}
PY=${PYTHON:-python3}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
cd "$REPO" || exit 1
T0=$(date +%s)
elapsed() { echo $(( $(date +%s) - T0 )); }
dhms() { printf "00:%02d:%02d:%02d" $(( $1 / 3600 )) $(( $1 % 3600 / 60 )) $(( $1 % 60 )); }  # Lightning's max_time
quiet() { grep -v -E "^\[torch\]|it/s\]|s/it\]|Loading weights|Writing model shards" || true; }
stamp() { echo "[$(elapsed) s] $*"; echo "$1 $(elapsed)" >> "$Z1G/timings.txt"; }

if [ "$MODE" = "--smoke" ] || [ "$MODE" = "smoke" ]; then
  SMOKE=1; MODE=${2:-all}
  Z1G=${Z1G:-$OUT/z1g_smoke}
  N=${Z1G_N:-6}; RES=${Z1G_RES:-16}; FIT_STEPS=${Z1G_FIT_STEPS:-0}; SHARDS=${Z1G_SHARDS:-1}; MESH_RES=16
  N_VAL=2; N_EXTRA=2; N_HELDOUT=2; PRESET=smoke; DEVICE=cpu
  TRAIN_ARGS=(data.batch_size=2 trainer.precision=32-true trainer.max_steps=2 system.warmup_steps=1)
  S2_ARGS=(trainer.max_steps=2)
  EVAL_ARGS=(--steps "${Z1G_STEPS:-2}" --guidance "${Z1G_GUIDANCE:-3}" --device cpu --no-require-beat)
  export CUDA_VISIBLE_DEVICES=""
else
  SMOKE=0
  Z1G=${Z1G:-/tmp/z1g}
  N=${Z1G_N:-320}; RES=${Z1G_RES:-32}; FIT_STEPS=${Z1G_FIT_STEPS:-100}; SHARDS=${Z1G_SHARDS:-6}; MESH_RES=48
  N_VAL=${Z1G_N_VAL:-24}; N_EXTRA=14; N_HELDOUT=4; PRESET=${Z1G_PRESET:-demo}; DEVICE=${Z1G_DEVICE:-cuda}
  # Z1G_EXTRA: more overrides for both stages (e.g. "trainer.precision=32-true data.batch_size=2" for a CPU dry run)
  S1_TIME=${Z1G_S1_TIME:-}; [ "$MODE" = all ] && S1_TIME=${S1_TIME:-110}
  TRAIN_ARGS=(${Z1G_EXTRA:-})
  S2_ARGS=()
  G=${Z1G_GUIDANCE:-1}; [ "$MODE" = all ] && G=${G%%,*}
  EVAL_ARGS=(--steps "${Z1G_STEPS:-50}" --guidance "$G" --device "$DEVICE")
  BUDGET=${Z1G_BUDGET:-565}; [ "$MODE" = all ] && BUDGET=${Z1G_BUDGET:-480}
  if [ -d .whl ] && [ "${Z1G_NO_WHEELS:-0}" = 0 ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      && export PYTHONPATH=/tmp/site:${PYTHONPATH:-} || exit 1
  fi
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
  # build caches that outlive one call on the warm machine (the home folder does not: gsplat's 2-3 min CUDA build
  # would run again in the eval call)
  export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/torch_extensions} TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/triton_cache}
  export THREESTUDIO_CACHE=${THREESTUDIO_CACHE:-/tmp/tscache}
  [ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
fi
export PYTHONUNBUFFERED=1
mkdir -p "$Z1G"
MESHES=$Z1G/meshes; DATA=$Z1G/data; MODELS=$Z1G/models; RUNS=$Z1G/runs
COMMON=(data.dataroot="$DATA" system.pretrained_model_name_or_path="$MODELS" system.cond_size="$RES"
        data.n_val_objects="$N_VAL" exp_root_dir="$RUNS" trainer.enable_progress_bar=false)
LOGS=$Z1G/logs; mkdir -p "$LOGS"
newest() { ls -dt "$RUNS/$1"/*/ 2>/dev/null | head -1; }

do_train() {
  : > "$Z1G/timings.txt"
  # 1. gsplat's CUDA build (first use) in the background, meshes and models on the CPU meanwhile
  if [ "$SMOKE" = 0 ] && [ "$DEVICE" = cuda ]; then
    $PY -c "import torch; from threestudio.ops.splatting import rasterize_gaussians as r; import gsplat; \
from gsplat.cuda._backend import _C; print('gsplat', gsplat.__version__, _C is not None)" > "$LOGS/gsplat_build.log" 2>&1 &
    GS_PID=$!
  fi
  per=$(( (N + SHARDS * 2 - 1) / (SHARDS * 2) ))
  pids=()
  for k in $(seq 0 $(( SHARDS * 2 - 1 ))); do
    n=$(( N - k * per )); [ $n -gt $per ] && n=$per; [ $n -le 0 ] && continue
    $PY custom/zero1tog/scripts/make_procedural_meshes.py "$MESHES/$(( k % SHARDS ))" --n $n --seed $(( k * per )) \
      --resolution $MESH_RES > /dev/null 2>> "$LOGS/meshes.log" &
    pids+=($!)
  done
  $PY custom/zero1tog/scripts/make_demo_models.py "$MODELS" --preset $PRESET --resolution "$RES" 2>&1 | quiet \
    | tail -2 > "$LOGS/models.log"
  for p in "${pids[@]}"; do wait "$p" || { echo "mesh generation failed"; tail "$LOGS/meshes.log"; return 1; }; done
  stamp meshes_and_models "$(find "$MESHES" -name '*.ply' | wc -l) meshes; $(cat "$LOGS/models.log" | tail -1)"
  if [ "$SMOKE" = 0 ] && [ "$DEVICE" = cuda ]; then
    wait "$GS_PID"; stamp gsplat_ready "$(tail -1 "$LOGS/gsplat_build.log")"
  fi
  # 2. GT splatters: SHARDS fit processes into one data folder, capped at Z1G_DATA_TIME (unfinished objects are not
  #    complete and are left out; the held-out split is the last N_VAL complete objects by name)
  $PY -c "import sys; sys.path.insert(0, '.'); from threestudio.utils.extensions import import_extension as i; \
i('custom/zero1tog', namespace='custom'); from custom.zero1tog import store; store.claim('$DATA')" || return 1
  pids=()
  for k in $(seq 0 $(( SHARDS - 1 ))); do
    [ -d "$MESHES/$k" ] || continue
    timeout "${Z1G_DATA_TIME:-100}" $PY custom/zero1tog/scripts/make_gt_splatters.py "$MESHES/$k" "$DATA" \
      --resolution "$RES" --steps "$FIT_STEPS" --n-extra $N_EXTRA --n-heldout $N_HELDOUT --no-progress --device $DEVICE \
      > "$LOGS/gt_fit_$k.log" 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
  n_obj=$(ls "$DATA"/*/complete.json 2>/dev/null | wc -l)
  stamp gt_data "$n_obj complete objects"
  grep -h "PSNR" "$LOGS"/gt_fit_*.log | awk '{s+=$(NF-3); n++} END {if (n) printf "GT fit held-out PSNR mean %.2f dB over %d\n", s/n, n}'
  [ "$n_obj" -gt "$N_VAL" ] || { echo "too few objects ($n_obj)"; return 1; }
  # 3. stage 1 (mix): Z1G_S1_TIME, or ("train") what the budget leaves after ~45 s of launch, save and report
  if [ "$SMOKE" = 0 ]; then
    s1t=${S1_TIME:-$(( BUDGET - $(elapsed) - 45 ))}; [ "$s1t" -lt 30 ] && s1t=30
    TRAIN_ARGS+=(trainer.max_time="$(dhms "$s1t")"); echo "stage 1: $s1t s of training"
  fi
  $PY launch.py --config custom/zero1tog/configs/demo-small.yaml --train "${COMMON[@]}" "${TRAIN_ARGS[@]}" 2>&1 \
    | quiet | tail -40 > "$LOGS/stage1.log"
  s1=$(newest zero1tog-demo-mix); [ -n "$s1" ] && [ -f "$s1/ckpts/last.ckpt" ] || { echo "stage 1 failed"; tail -20 "$LOGS/stage1.log"; return 1; }
  stamp stage1 "$s1"
  report_steps "$s1"
  return 0
}

report_steps() {
  for s in "$@"; do
    $PY - "$s" <<'EOF'
import csv, glob, sys, torch
c = torch.load(sys.argv[1] + "/ckpts/last.ckpt", map_location="cpu", weights_only=False)
rows = [r for f in glob.glob(sys.argv[1] + "/csv_logs/metrics.csv") for r in csv.DictReader(open(f))
        if r.get("train/loss_diffusion")]
loss = [float(r["train/loss_diffusion"]) for r in rows]
k = max(1, len(loss) // 10)
if loss:
    msg = f"diffusion loss first {sum(loss[:k]) / k:.4f} last {sum(loss[-k:]) / k:.4f} ({len(loss)} logged steps)"
else:
    msg = "no diffusion loss logged yet (fewer steps than the logging interval)"
print(sys.argv[1], "global_step", c["global_step"], msg)
EOF
  done | tee -a "$LOGS/steps.log"
}

do_stage2() {
  # 4. stage 2 (joint) from stage 1's EMA weights: Z1G_S2_TIME ("all": cut to what the budget leaves)
  local s1 s2t; s1=$(newest zero1tog-demo-mix)
  [ -n "$s1" ] && [ -f "$s1/ckpts/last.ckpt" ] || { echo "no stage-1 trial under $RUNS: run the train step first (same warm machine)"; return 1; }
  if [ "$SMOKE" = 0 ]; then
    s2=${Z1G_S2_TIME:-180}
    if [ "$MODE" = all ]; then left=$(( BUDGET - $(elapsed) - 35 )); [ $left -lt $s2 ] && s2=$left; fi
    [ $s2 -lt 30 ] && s2=30
    S2_ARGS=(trainer.max_time="$(dhms $s2)"); echo "stage 2: $s2 s of training"
  fi
  $PY launch.py --config custom/zero1tog/configs/demo-small-joint.yaml --train "${COMMON[@]}" "${TRAIN_ARGS[@]}" \
    "${S2_ARGS[@]}" system.init_from="$s1" 2>&1 | quiet | tail -40 > "$LOGS/stage2.log"
  s2t=$(newest zero1tog-demo-joint); [ -n "$s2t" ] && [ -f "$s2t/ckpts/last.ckpt" ] || { echo "stage 2 failed"; tail -20 "$LOGS/stage2.log"; return 1; }
  stamp stage2 "$s2t"
  report_steps "$s2t"
}

do_eval() {
  local s1 s2t; s1=$(newest zero1tog-demo-mix); s2t=$(newest zero1tog-demo-joint)
  # stage 2 first unless a stage-2 trial newer than the stage-1 trial is there
  if [ -z "$s2t" ] || [ -z "$s1" ] || [ "$s1" -nt "$s2t" ]; then do_stage2 || return 1; s2t=$(newest zero1tog-demo-joint); fi
  $PY custom/zero1tog/scripts/eval_demo.py "$s2t" --json "$OUT/eval_demo.json" --grid "$OUT/eval_grid.png" \
    "${EVAL_ARGS[@]}" 2>&1 | quiet | tee "$OUT/eval.log" | grep -v "^  proc_"
  local rc=${PIPESTATUS[0]}
  stamp eval "rc $rc"
  return "$rc"
}

rc=0
exec > >(tee -a "$OUT/demo.log") 2>&1
case "$MODE" in
  train) do_train || rc=1 ;;
  eval) do_eval || rc=$? ;;
  all) do_train && do_stage2 && { do_eval || rc=$?; } || rc=1 ;;
  *) echo "usage: gpu_zero1tog_demo.sh train | eval | all | --smoke"; exit 2 ;;
esac
cp "$Z1G/timings.txt" "$OUT/timings_$MODE.txt" 2>/dev/null
[ $rc -ne 0 ] && for f in "$LOGS"/stage*.log "$LOGS"/gt_fit_0.log "$LOGS"/gsplat_build.log; do
  [ -f "$f" ] && { echo "== tail $f"; tail -15 "$f"; }; done
echo "total $(elapsed) s, rc $rc"
exit $rc
