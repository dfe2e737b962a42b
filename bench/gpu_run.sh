#!/usr/bin/env bash
# One prepared GPU session (issue 9): about 7 minutes of device time at most, results in $OUT.
#
# Parts, cheapest first; each has its own timeout, and none starts past the 7-minute deadline
# (a part that fails or times out does not stop the next; a failed preflight stops everything):
#   preflight  install the carried wheels (.whl/) into a scratch folder; import pyro_ssvi, its training
#              app, hydra and uncertainty-calibration; check the GPU (a cold torch import: slow)  <= 45 s
#   paper      bench/throughput.py, ResNet-18 width 1, batch 128, fp32 (the paper's configuration):
#              (a) SSVI 90% sparse, (d) plain LRT, (c) det., (e) (a) from a CUDA graph         <= 50 s
#   fast       the same at batch 512, bf16 autocast, channels_last                               <= 50 s
#   profile    bench/kernel_profile.py at batch 128: kernel time per step of (a) and (d), by
#              kernel and by group (convolutions, elementwise, random, ...)                      <= 40 s
#   train      CIFAR-10 (JPEG q75 copy) SSVI 90% with the training app (pyro_ssvi.train), as many
#              epochs up to 10 as the paper part's SSVI step time says fit; accuracy, NLL, ECE,
#              the paper's calibration error               >= 200 s: all that is left before the deadline
# What each part took on an H200: docs/benchmarks.md, "GPU session script".
#
# Device tool call (from the root of the checkout that holds .whl/ and .data/):
#   run(command="bash bench/gpu_run.sh", carry=[".whl", ".data"], timeout_s=480)
# A rerun of some parts:  run(command="GPU_RUN_PARTS=train GPU_RUN_EPOCHS=10 bash bench/gpu_run.sh", ...)
# with extra overrides for the training app:  GPU_RUN_TRAIN_ARGS="train.cuda_graph=true data.limit_train=10000"
#
# What comes back in $OUT (7 files, each written as the run goes, so a timeout keeps what finished):
#   gpu_run.log    timeline: each part's start, end, rc and seconds, and a summary at the end
#   preflight.log, paper.log, fast.log, profile.log, train.log   each part's console output
#   results.jsonl  one JSON object a line: {"part", "event": "start"|"end", ...} from this script;
#                  {"bench", "config", "result"} per benchmark configuration as it finishes and
#                  {"report"} at a benchmark's end; {"part": "train", "epoch_row"} per epoch and
#                  {"part": "train", "final"} (appended when the training part ends, even by timeout)
# Everything else (wheels installed, decoded data cache, checkpoint, plots) goes to $GPU_RUN_SCRATCH
# (default /tmp/gpu_run_scratch), never into .data/ or .whl/, which travel, nor into $OUT.
#
# Build what travels, here, once, from the repo root (the package registries are reachable here,
# not there; the GPU image has torch, numpy, tqdm, scikit-learn, safetensors, matplotlib, pyyaml,
# packaging, opt-einsum but none of these):
#   mkdir -p .data && cp ../shared/data/cifar10-jpeg.tar.gz .data/
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl pyro-ppl==1.9.2 pyro-api==0.1.2 hydra-core==1.3.8 omegaconf==2.3.1 parameterized==0.9.0
#   python3 -m pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3 uncertainty-calibration==0.1.4
# (the last two have no wheel on the index; both are pure Python, so a wheel built here installs there.)
# .whl/ and .data/ are in .gitignore; about 20 MiB travel of the 64 MiB allowed.
#
#   bash bench/gpu_run.sh --check   here, no GPU: wheels cover every missing package for CPython 3.12,
#                                   what travels < 64 MiB, data sha256, and a --smoke run's $OUT
#   bash bench/gpu_run.sh --smoke   every part on CPU at tiny sizes (width 1/16, a 320-image archive)
#   bash bench/gpu_run.sh --plan    the parts and their timeouts against the budget
set -u
cd "$(dirname "$0")/.." || exit 1  # the repo root, whatever the caller's folder

MODE=full
case "${1:-}" in
  "") ;;
  --smoke | --check | --plan) MODE=${1#--} ;;
  *) echo "usage: bash bench/gpu_run.sh [--smoke | --check | --plan]" >&2; exit 2 ;;
esac

# Parts in the order they run, and their timeouts in seconds (full run, on the GPU).
PARTS=(preflight paper fast profile train)
declare -A LIMIT=([preflight]=45 [paper]=50 [fast]=50 [profile]=40 [train]=200)
BUDGET_S=420   # the whole run, all parts (7 minutes)
KILL_GRACE_S=5 # timeout's -k: a part that ignores SIGTERM is killed this much later

if [ "$MODE" = plan ]; then
  total=0
  for p in "${PARTS[@]}"; do
    echo "$p ${LIMIT[$p]}"
    total=$(( total + LIMIT[$p] + KILL_GRACE_S ))
  done
  echo "total $total budget $BUDGET_S"
  [ "$total" -le "$BUDGET_S" ] || { echo "the parts' timeouts exceed the budget" >&2; exit 1; }
  exit 0
fi

if [ "$MODE" = check ]; then
  # Static checks, then a smoke run into a temporary $OUT, which must come back whole, while the
  # carried folders stay as they were (a local run must not grow what travels).
  status=0
  python3 bench/gpu_tools.py check-static || status=1
  carried() { find .whl .data -type f -printf '%p %s %T@\n' 2>/dev/null | sort | sha256sum; }
  before=$(carried)
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/gpu_run_check.XXXXXX")
  t0=$(date +%s)
  OUT=$tmp/out GPU_RUN_SCRATCH=$tmp/scratch bash bench/gpu_run.sh --smoke > "$tmp/smoke.console" 2>&1
  rc=$?
  echo "smoke run: rc=$rc in $(( $(date +%s) - t0 )) s (console: $tmp/smoke.console)"
  [ $rc -eq 0 ] || { tail -n 30 "$tmp/smoke.console"; status=1; }
  python3 bench/gpu_tools.py check-out "$tmp/out" || status=1
  if [ "$(carried)" != "$before" ]; then
    echo "FAIL: the smoke run changed files in .whl/ or .data/ (they travel); it must write only to scratch"
    status=1
  fi
  [ $status -eq 0 ] && rm -rf "$tmp" && echo "check: ok" || echo "check: FAILED (files kept in $tmp)"
  exit $status
fi

export PYTHONUNBUFFERED=1 PIP_ROOT_USER_ACTION=ignore
START=$(date +%s)
OUT=${OUT:-${TMPDIR:-/tmp}/gpu_run_out}  # the device tool sets OUT; locally, a folder outside the repo
SCRATCH=${GPU_RUN_SCRATCH:-${TMPDIR:-/tmp}/gpu_run_scratch}
mkdir -p "$OUT" "$SCRATCH"
rm -f "$OUT/gpu_run.log" "$OUT/results.jsonl"  # a local rerun starts afresh (the device tool empties $OUT)
for p in "${PARTS[@]}"; do rm -f "$OUT/$p.log"; done
rm -rf "$SCRATCH/train"  # the training app refuses a folder that holds an earlier run
RESULTS=$OUT/results.jsonl
SITE=$SCRATCH/site
WANTED=",${GPU_RUN_PARTS:-paper,fast,profile,train},"
ARCHIVE=.data/cifar10-jpeg.tar.gz

if [ "$MODE" = smoke ]; then
  DEV=cpu
  declare -A LIMIT=([preflight]=120 [paper]=180 [fast]=180 [profile]=120 [train]=300)
  BUDGET_S=930
  BENCH=(--device cpu --width 0.0625 --steps 4 --warmup 1 --rounds 1 --configs ssvi,plain,det)
  PAPER=(--batch 8)
  FAST=(--batch 16 --bf16 --library-options)  # the benchmark refuses channels_last on CPU (a oneDNN crash)
  PROFILE=(--device cpu --width 0.0625 --batch 4 --warmup 2 --steps 2)
  TRAIN=(model.width=0.0625 train.batch_size=32 eval.batch_size=128)
  EPOCHS=1
else
  DEV=cuda
  # 50 timed steps after 10 warm-up, then 30 back to back, one round per configuration so that each
  # one's line reaches results.jsonl as soon as it is timed (a dedicated GPU needs no interleaving).
  # The CUDA-graph configuration (e) last: a capture that fails leaves the CUDA generator in
  # capture mode, and every configuration after it in the same process would fail too.
  BENCH=(--device cuda --steps 50 --warmup 10 --block 30 --rounds 1 --configs ssvi,plain,det,graph)
  PAPER=(--batch 128)
  FAST=(--batch 512 --channels-last --bf16 --library-options)
  PROFILE=(--device cuda --batch 128 --warmup 10 --steps 5)
  read -r -a TRAIN <<< "${GPU_RUN_TRAIN_ARGS:-}"  # extra overrides, e.g. "train.cuda_graph=true data.limit_train=10000"
  EPOCHS=${GPU_RUN_EPOCHS:-}
fi
DEADLINE=$(( START + BUDGET_S ))

log() { echo "[gpu_run +$(( $(date +%s) - START ))s] $*" | tee -a "$OUT/gpu_run.log"; }
event() { echo "{\"part\": \"$1\", \"event\": \"$2\"$3, \"t_s\": $(( $(date +%s) - START ))}" >> "$RESULTS"; }

# part NAME CMD...: run one part under min(its timeout, time left before the deadline); its output
# goes to $OUT/NAME.log as it is written. Returns the command's rc (124: timed out, 125: not started).
part() {
  local name=$1; shift
  local limit=${LIMIT[$name]} left=$(( DEADLINE - $(date +%s) - KILL_GRACE_S ))
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -lt 10 ]; then
    log "skip $name: only ${left}s left of the ${BUDGET_S}s budget"
    event "$name" start ", \"timeout_s\": 0"; event "$name" end ", \"rc\": 125, \"seconds\": 0"
    return 125
  fi
  log "start $name (timeout ${limit}s): $*"
  event "$name" start ", \"timeout_s\": $limit"
  local t0 rc
  t0=$(date +%s)
  timeout -k "$KILL_GRACE_S" "$limit" "$@" >> "$OUT/$name.log" 2>&1
  rc=$?
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && log "$name TIMED OUT after ${limit}s; its log and the results it wrote so far are kept"
  event "$name" end ", \"rc\": $rc, \"seconds\": $(( $(date +%s) - t0 ))"
  log "end $name rc=$rc in $(( $(date +%s) - t0 ))s"
  tail -n 12 "$OUT/$name.log"  # to the console: the device tool returns the output's tail
  return $rc
}

# The wheels go to a scratch folder put first on PYTHONPATH (the device README's install line).
do_preflight() {
  date -u +%FT%TZ
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  if ! ls .whl/*.whl > /dev/null 2>&1; then
    echo "PREFLIGHT FAILED: no wheels in .whl/. Expected pyro-ppl, hydra-core and the rest there (the GPU image"
    echo "lacks them): build .whl/ per the header of bench/gpu_run.sh and name .whl in the run's carry list."
    return 1
  fi
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    || { echo "PREFLIGHT FAILED: pip could not install .whl/*.whl into $SITE (output above)"; return 1; }
  python3 bench/gpu_tools.py preflight --device "$DEV" || return 1
  if [ -f "$ARCHIVE" ]; then
    sha256sum "$ARCHIVE"
  else
    echo "warning: $ARCHIVE is missing (carry .data): the train part will be skipped"
  fi
}
export -f do_preflight
export SITE DEV ARCHIVE PYTHONPATH=$SITE:$PWD

log "mode $MODE, device $DEV, budget ${BUDGET_S}s, parts ${WANTED//,/ }, OUT=$OUT, scratch $SCRATCH"
if ! part preflight bash -c do_preflight; then
  log "stopping: preflight failed, nothing else can run (reason in preflight.log, shown above)"
  exit 1
fi

if [[ $WANTED == *,paper,* ]]; then
  part paper python3 bench/throughput.py "${BENCH[@]}" "${PAPER[@]}" --jsonl "$RESULTS"
fi
if [[ $WANTED == *,fast,* ]]; then
  part fast python3 bench/throughput.py "${BENCH[@]}" "${FAST[@]}" --jsonl "$RESULTS"
fi
if [[ $WANTED == *,profile,* ]]; then
  part profile python3 bench/kernel_profile.py "${PROFILE[@]}" --jsonl "$RESULTS"
fi

if [[ $WANTED == *,train,* ]]; then
  data=$ARCHIVE
  if [ "$MODE" = smoke ] && [ -f "$ARCHIVE" ]; then
    # A 320-image copy of the real archive: the app's real decode, cache and training path, in seconds.
    data=$SCRATCH/cifar10-tiny.tar.gz
    python3 bench/gpu_tools.py tiny-archive "$ARCHIVE" "$data" --per-class 16 >> "$OUT/gpu_run.log" 2>&1
  fi
  if [ ! -f "$data" ]; then
    log "skip train: $data is missing (cp ../shared/data/cifar10-jpeg.tar.gz .data/ and carry .data)"
    event train start ", \"timeout_s\": 0"; event train end ", \"rc\": 3, \"seconds\": 0"
  else
    # The last part also gets the time the earlier ones left unused: up to the deadline.
    left=$(( DEADLINE - $(date +%s) - KILL_GRACE_S ))
    [ "$left" -gt "${LIMIT[train]}" ] && LIMIT[train]=$left
    [ -n "$EPOCHS" ] || EPOCHS=$(python3 bench/gpu_tools.py epochs "$RESULTS" --seconds "${LIMIT[train]}" --max 10 \
                                   --fallback 6 2>> "$OUT/gpu_run.log")
    [ -n "$EPOCHS" ] || EPOCHS=6
    part train python3 -m pyro_ssvi.train experiment=cifar10_resnet18 data=cifar10_archive data.root="$data" \
      data.cache_dir="$SCRATCH/cache" method.sparsity=0.9 device="$DEV" progress=false \
      output_dir="$SCRATCH/train" train.epochs="$EPOCHS" checkpoint.every=0 "${TRAIN[@]}"
    python3 bench/gpu_tools.py collect-train "$SCRATCH/train" "$RESULTS" 2>&1 | tee -a "$OUT/gpu_run.log"
  fi
fi

python3 bench/gpu_tools.py summary "$RESULTS" 2>&1 | tee -a "$OUT/gpu_run.log"
log "done in $(( $(date +%s) - START ))s; results in $OUT"
# Exit non-zero when any part failed, so that --check (and a reader of rc) sees it.
! grep -q '"event": "end", "rc": [1-9]' "$RESULTS"
