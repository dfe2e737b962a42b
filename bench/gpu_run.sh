#!/usr/bin/env bash
# One prepared GPU session for issue 4 (about 8 minutes of device time): everything lands in $OUT.
#
#   1. install the carried wheels (.whl/) into /tmp/site
#   2. bench/throughput.py on CUDA: the paper's configuration (ResNet-18 width 1, batch 128, fp32)
#      and the fastest configuration we ship (batch 512, channels_last, bf16 autocast; the library
#      has no flag for the last two, so (a)/(b) get them from outside: --library-options)
#   3. a 10-epoch CIFAR-10 (JPEG q75 copy) SSVI run at 90% sparsity with the training app
#
# Device tool call (from the repo root here):
#   run(command="bash bench/gpu_run.sh", carry=[".whl", ".data"], timeout_s=600)
# Before it: .data/cifar10-jpeg.tar.gz (cp ../shared/data/cifar10-jpeg.tar.gz .data/) and .whl/
# with the packages the GPU image lacks (KINDS.md lists what it has; torch, numpy, tqdm, matplotlib,
# scikit-learn, pillow, opt-einsum are there): pyro-ppl 1.9.x, hydra-core 1.3.x, omegaconf 2.3.x,
# antlr4-python3-runtime 4.9.3, uncertainty-calibration (download per /work/.library/device/README.md,
# --python-version 3.12).
#
# Check the script itself on CPU with tiny sizes:   bash bench/gpu_run.sh --smoke
#
# The smoke mode ran green on CPU against the finished training app (all three parts).
set -u
MODE=full
[ "${1:-}" = "--smoke" ] && MODE=smoke
OUT=${OUT:-/tmp/gpu_run_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
START=$(date +%s)

log() { echo "[gpu_run +$(( $(date +%s) - START ))s] $*" | tee -a "$OUT/gpu_run.log"; }

# run NAME TIMEOUT_S CMD...: one part; its output goes to $OUT/NAME.log; a failure does not stop the rest.
run() {
  local name=$1 limit=$2; shift 2
  log "start $name: $*"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  log "end $name rc=$rc"
  tail -n 25 "$OUT/$name.log"
}

# 1. wheels
if ls .whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { log "wheel install failed"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
else
  log "no .whl/ here: using the installed packages"
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi

{
  date -u +%FT%TZ
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  python3 -c "import torch, pyro; print('torch', torch.__version__, 'pyro', pyro.__version__, 'cuda', torch.cuda.is_available())"
  git rev-parse HEAD 2>/dev/null
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

if [ "$MODE" = smoke ]; then
  DEV=cpu
  BENCH_DEFAULT=(--width 0.0625 --batch 8 --steps 4 --warmup 1)
  BENCH_FAST=(--width 0.0625 --batch 16 --steps 4 --warmup 1 --channels-last --bf16 --library-options)
  TRAIN=(model.width=0.0625 train.epochs=1 train.batch_size=32 data.limit_train=256 data.limit_test=128
         eval.batch_size=128)
  T_BENCH=300; T_TRAIN=600
else
  DEV=cuda
  BENCH_DEFAULT=()                                               # width 1, batch 128, fp32: the paper
  BENCH_FAST=(--batch 512 --channels-last --bf16 --library-options)
  TRAIN=(train.epochs=10 checkpoint.every=0)  # cosine lr, KL warm-up and surgery over 10 epochs; one checkpoint
  T_BENCH=100; T_TRAIN=330
fi

# 2. throughput
run throughput_default "$T_BENCH" python3 bench/throughput.py --device "$DEV" "${BENCH_DEFAULT[@]}" \
  --out "$OUT/throughput_default.json"
run throughput_fast "$T_BENCH" python3 bench/throughput.py --device "$DEV" "${BENCH_FAST[@]}" \
  --out "$OUT/throughput_fast.json"

# 3. 10-epoch CIFAR-10 SSVI at 90% sparsity (the authors' code: 86.0% after 14 epochs, ANCHORS.md)
run train_cifar10_ssvi90 "$T_TRAIN" python3 -m pyro_ssvi.train experiment=cifar10_resnet18 data=cifar10_archive \
  data.root=.data/cifar10-jpeg.tar.gz method.sparsity=0.9 device="$DEV" progress=false \
  output_dir="$OUT/cifar10_ssvi90" "${TRAIN[@]}"

log "done"
