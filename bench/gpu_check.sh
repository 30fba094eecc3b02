#!/usr/bin/env bash
# One GPU check for a lent H200 (or any CUDA machine), within about 9 minutes: attention kernels
# (torch, flex, flash where it imports) and the chunked cross-entropy against their references, the
# 1B and the 7B-width PLT timed per R and backend, decode latency, a profiler table. What runs in
# which order, and the tolerances: bench/gpu_check.py. Results: $OUT/gpu_check.json and
# $OUT/gpu_check.md (and profile_*.txt, gpu_check.log).
#
# The device machine has torch but no megatron-core and no internet, so the wheels travel with
# the working tree. Two steps:
#   1. here (with pip access), once:       bash bench/gpu_check.sh prepare
#      -> .whl/megatron_core-0.16.1-cp312-...whl (Python 3.12 x86-64, the device image's) and
#         liger-kernel's pure-Python wheel (compared with our chunked cross-entropy where triton
#         imports), ignored by git through .git/info/exclude
#   2. on the device (run tool, carry [".whl"], timeout_s ~560):
#         bash bench/gpu_check.sh run [gpu_check.py options]
#      installs the wheels into /tmp/site (no deps: torch, numpy, packaging, pyyaml are there),
#      then runs the check; no case starts after --budget-s (450 s by default), and the results are
#      rewritten after every case, so a run cut short still leaves what it measured.
# CPU dry run of the same code path (no wheels needed here), well under a minute:
#   bash bench/gpu_check.sh cpu          (writes under $OUT, else outputs/gpu_check)
#
# The trainer itself on the GPU (the default job's entry point: bf16, NCCL, the distributed
# optimizer, a checkpoint and a resume from it): bash bench/gpu_check.sh train. It needs the trainer's
# pure-Python requirements the image lacks as wheels too: bash bench/gpu_check.sh prepare-train.
# wandb is left out (mode=disabled): its wheel and its many requirements would not fit the budget.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-run}"; shift || true

case "$mode" in
  prepare)
    exclude="$(git rev-parse --git-path info/exclude)"
    mkdir -p "$(dirname "$exclude")"
    grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
    mkdir -p .whl
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
      --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 -d .whl megatron-core==0.16.1
    python3 -m pip download --no-deps --only-binary=:all: -d .whl liger-kernel==0.8.5 || \
      echo "liger-kernel not downloaded: the check then compares the chunked loss with the unfused one only"
    ls -l .whl
    ;;
  prepare-train)
    bash "$0" prepare
    for req in hydra-core==1.3.8 omegaconf==2.3.1 datasets==5.2.0 'dill<0.4.2' 'multiprocess<0.70.20' kitoken==0.11.1; do
      python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform any -d .whl "$req"
    done
    # hydra's parser runtime ships as an sdist only: build its (pure-Python) wheel here
    python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
    ls -l .whl
    ;;
  run|train)
    if ls .whl/*.whl >/dev/null 2>&1; then
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
      export PYTHONPATH="/tmp/site:${PWD}${PYTHONPATH:+:$PYTHONPATH}"
    else
      python3 -c 'import megatron.core' 2>/dev/null || {
        echo "megatron-core is missing: run 'bash bench/gpu_check.sh prepare' where pip works and" \
             "carry .whl to this machine" >&2; exit 2; }
      export PYTHONPATH="${PWD}${PYTHONPATH:+:$PYTHONPATH}"
    fi
    export PYTHONUNBUFFERED=1
    if [ "$mode" = train ]; then
      # The default job for 40 steps with a checkpoint at 20 and 40, then a resume to 60 from it.
      run_dir=/tmp/gpu_train; rm -rf "$run_dir"
      common=(run_dir="$run_dir" logging.wandb.mode=disabled checkpoint.interval=20 train.decay_steps=60 "$@")
      python3 -m pretrain.train "${common[@]}" train.max_steps=40
      python3 -m pretrain.train "${common[@]}" train.max_steps=60
      [ -n "${OUT:-}" ] && cp "$run_dir/metrics.jsonl" "$OUT/gpu_train_metrics.jsonl"
      exit 0
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    # Fewer out-of-memory failures from fragmentation when models of several sizes follow each other
    export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"
    log="${OUT:-/tmp}/gpu_check.log"
    python3 bench/gpu_check.py --device cuda "$@" 2>&1 | grep -v -E 'warnings.warn|UserWarning' | tee "$log"
    exit "${PIPESTATUS[0]}"
    ;;
  cpu)
    py="${PYTHON:-.venv/bin/python}"
    [ -x "$py" ] || py=python3
    "$py" bench/gpu_check.py --device cpu --tiny --steps 1 --loops 1,2 "$@"
    ;;
  *)
    echo "usage: bash bench/gpu_check.sh prepare | run [options] | cpu [options]" >&2; exit 2 ;;
esac
