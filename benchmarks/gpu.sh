#!/usr/bin/env bash
# The GPU benchmarks of the open speed goals in one run of under 10 minutes, for a lent GPU machine
# whose image has jax, flax, optax, orbax, torch and transformers but not every package jaxgen
# imports (benchmarks/gpu_wheels.sh fetches those as wheels into .whl/ first):
#
#   bash benchmarks/gpu_wheels.sh                  # here, with pip: .whl/ (ignored by git)
#   # then, on the GPU machine (the device tool: carry .whl, timeout 600 s):
#   bash benchmarks/gpu.sh
#
# Each benchmark has its own time limit, so one that overruns leaves the others their turn; every
# log goes to $OUT (the device tool's return folder) or benchmarks/gpu_logs. Order = what only a
# GPU can measure first: the SD 1.5-size text-to-image step (issue 14), the Softlabel-GAN step
# (issue 12), MVLD's paper-size UnetMLP (issue 10).
set -u
OUT=${OUT:-benchmarks/gpu_logs}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=.:${PYTHONPATH:-} PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false

{
  nvidia-smi -L
  python3 -c "import sys, jax, torch; print(sys.version.split()[0], 'jax', jax.__version__, \
jax.devices(), 'torch', torch.__version__, torch.cuda.is_available())"
  # Every module the benchmarks import, before any time is spent on them.
  python3 -c "import jaxgen.softlabel_gan.train, jaxgen.mvld.model, jaxgen.t2i.sampling, \
benchmarks.torch_t2i, benchmarks.torch_biggan, benchmarks.torch_unet_mlp, diffusers; print('imports ok')"
} 2>&1 | tee "$OUT/device.log"

bench() {  # name, seconds, script and arguments
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s): python3 $*" | tee "$OUT/$name.log"
  timeout --signal=KILL "$limit" python3 "$@" 2>&1 | tee -a "$OUT/$name.log"
  echo "== $name exit ${PIPESTATUS[0]}" | tee -a "$OUT/$name.log"
}

# Limits sum to 540 s, leaving the start-up and import check room inside the tool's 600 s.
bench t2i 300 benchmarks/t2i.py --size sd15 --steps 10 --calls 3
bench gan 130 benchmarks/gan.py --ch 64 --steps 8 --rounds 3 --warmup 3 --routes xla
bench mvld 110 benchmarks/mvld.py --net unet_mlp --batch 16,256 --train-batch 64 --steps 100 \
    --repeats 3
