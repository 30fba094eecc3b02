"""Let megatron-core 0.16.1 run on a machine without CUDA (CPU tensors, gloo process groups).

megatron-core assumes a GPU in a few dozen places. On a CPU-only machine (CI, laptops) this module
bends exactly those places, and nothing else, so that the same model, optimizer, pipeline schedules
and dist_checkpointing code runs unchanged. ``apply()`` (idempotent) turns it on; importing
``model`` does not. Every process that builds a model calls it first through pretrain/distributed.py
(``start_processes``: the trainer and, through ``init_distributed``, the benchmarks;
``single_process_world``: the tools, evaluation, benchmarks), or
planning/dry_run.py's ``fake_world`` (the layout dry run); the tests call it themselves
(tests/conftest.py, tests/distributed/). It does nothing at all when ``torch.cuda.is_available()``:
on a GPU every megatron call runs as megatron wrote it.

Each patch, with the megatron call it unblocks:

1. ``torch.cuda.current_device`` -> ``torch.device("cpu")``. megatron allocates with
   ``device=torch.cuda.current_device()`` (tensor_parallel.mappings/layers all-gather buffers,
   RotaryEmbedding.get_emb, param_and_grad_buffer, p2p shape exchange, distrib_optimizer buffers).
2. ``torch.cuda.synchronize`` -> no-op. Called by pipeline_parallel.p2p_communication, parallel_state,
   dist_checkpointing (fully_parallel, filesystem_async, async_utils); CPU work is already ordered.
3. The CUDA RNG is the CPU RNG: ``torch.cuda.{get_rng_state,set_rng_state,manual_seed}`` and
   megatron's ``tensor_parallel.random._get_cuda_rng_state/_set_cuda_rng_state``, which
   ``model_parallel_cuda_manual_seed`` and ``CudaRNGStatesTracker.add/fork`` call. On a CPU the CPU
   generator is the device generator, so the tracker's forked streams (data-parallel,
   tensor-parallel, expert) keep their meaning.
4. A ``TorchFunctionMode`` (``_CudaToCpuMode``), entered once for the process, that
   - rewrites ``device="cuda"`` (or ``cuda:N``) arguments of tensor factories to CPU: the hard-coded
     ``torch.zeros([], device="cuda")`` of pipeline_parallel.schedules (token counts),
     ``torch.tensor(..., device='cuda')`` of optimizer.optimizer (found_inf, loss scale),
     optimizer.clip_grads (grad norm), rerun_state_machine and dist_checkpointing.exchange_utils;
   - makes ``Tensor.cuda()`` return the tensor itself (optimizer.reload_model_params,
     exchange_utils, utils.check_param_hashes_across_dp_replicas);
   - drops ``pin_memory=True`` (pinning needs CUDA);
   - reports CPU tensors' ``Tensor.type()`` under their CUDA names (``torch.cuda.FloatTensor``), the
     strings that optimizer.optimizer, optimizer.distrib_optimizer and optimizer.clip_grads compare
     parameter types against.

The mode is thread-local in torch: threads that megatron starts (async checkpoint writers) do file
I/O only and do not need it.
"""

from __future__ import annotations

import logging

import torch
from torch.overrides import TorchFunctionMode

_log = logging.getLogger(__name__)
_applied = False
_mode: TorchFunctionMode | None = None

# Tensor factories and conversions whose `device` argument megatron hard-codes to CUDA.
_CPU = torch.device("cpu")
_CUDA_TYPE_NAMES = {
    "torch.FloatTensor": "torch.cuda.FloatTensor",
    "torch.HalfTensor": "torch.cuda.HalfTensor",
    "torch.BFloat16Tensor": "torch.cuda.BFloat16Tensor",
    "torch.DoubleTensor": "torch.cuda.DoubleTensor",
    "torch.LongTensor": "torch.cuda.LongTensor",
    "torch.IntTensor": "torch.cuda.IntTensor",
}


def _is_cuda_device(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    return False


class _CudaToCpuMode(TorchFunctionMode):
    """Map megatron's hard-coded CUDA placements onto the CPU (see the module docstring, patch 4)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return _CUDA_TYPE_NAMES.get(name, name)
        if _is_cuda_device(kwargs.get("device")):
            kwargs = dict(kwargs, device=_CPU)
        if kwargs.get("pin_memory"):
            kwargs = dict(kwargs, pin_memory=False)
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], _CPU) + tuple(args[2:])
        return func(*args, **kwargs)


def needed() -> bool:
    """True when this process has no CUDA device, i.e. when the patches must be applied."""
    return not torch.cuda.is_available()


def is_active() -> bool:
    return _applied


def apply() -> bool:
    """Apply every patch once if CUDA is absent. Returns whether the patches are active."""
    global _applied, _mode
    if _applied or not needed():
        return _applied

    from megatron.core.tensor_parallel import random as mcore_random

    torch.cuda.current_device = lambda: _CPU
    torch.cuda.synchronize = lambda *args, **kwargs: None
    torch.cuda.get_rng_state = lambda *args, **kwargs: torch.get_rng_state()
    torch.cuda.set_rng_state = lambda state, *args, **kwargs: torch.set_rng_state(state)
    torch.cuda.manual_seed = lambda seed: torch.manual_seed(seed)
    mcore_random._get_cuda_rng_state = lambda *args, **kwargs: torch.get_rng_state()
    mcore_random._set_cuda_rng_state = lambda state, *args, **kwargs: torch.set_rng_state(state)

    _mode = _CudaToCpuMode()
    _mode.__enter__()  # stays on for the life of the process (this thread)
    _applied = True
    _log.debug("megatron-core CPU compatibility layer applied (no CUDA device)")
    return True
