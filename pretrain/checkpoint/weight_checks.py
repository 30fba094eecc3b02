"""Weights that cannot train are refused by name, wherever weights enter a checkpoint or a run.

    check_float_dtype(name, dtype, where)     an integer/bool tensor: refused (it trains a dead
                                              model: no gradient flows through it)
    check_finite(name, tensor, where)         NaN or inf: refused (the first step is NaN, and the
                                              trainer would blame the learning rate)
    check_finite_weights(weights, where)      every tensor of a {name: tensor} dict

Used by handoff/read.py (import_hf, checkpoint.init_from, evaluate --hf: tensor by tensor as the
shards stream), handoff/export.py (before anything is written) and pretrain/checkpoint/init.py
(our own checkpoints as init_from, on each rank's loaded parameters). `where` names the file or
folder in the message; every refusal is a CheckpointError (exit 4).

Finiteness is checked in chunks so that a large tensor costs a small mask, not a second copy.
"""

from __future__ import annotations

from typing import Dict

import torch

from pretrain.errors import CheckpointError

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# safetensors' names of the same: the only dtypes a weight may be stored as.
FLOAT_DTYPE_NAMES = ("F32", "F16", "BF16", "F64")
_CHUNK = 1 << 24  # elements per isfinite pass: a 16 MiB bool mask at most


def check_float_dtype(name: str, dtype, where: str) -> None:
    """Refuse a weight stored as anything but F32/F16/BF16/F64 (a torch dtype or safetensors'
    dtype string)."""
    if dtype in FLOAT_DTYPES or dtype in FLOAT_DTYPE_NAMES:
        return
    shown = str(dtype).replace("torch.", "")
    raise CheckpointError(
        f"{where}: tensor {name} is stored as {shown}; loopcoder reads weights stored as F32, "
        "BF16, F16 or F64 only (an integer or bool weight trains a dead model: no gradient flows "
        "through it; 8-bit floats are a quantization to undo first): store the weights in one of "
        "those (e.g. model.to(torch.bfloat16) before save_pretrained)")


def _count_bad(flat: torch.Tensor):
    nan = inf = 0
    for start in range(0, flat.numel(), _CHUNK):
        chunk = flat[start:start + _CHUNK]
        nan += int(torch.isnan(chunk).sum())
        inf += int(torch.isinf(chunk).sum())
    return nan, inf


def check_finite(name: str, tensor: torch.Tensor, where: str) -> None:
    """Refuse a tensor holding NaN or +-inf, naming it, `where` and how many values are bad."""
    check_float_dtype(name, tensor.dtype, where)
    flat = tensor.detach().reshape(-1)
    if all(bool(torch.isfinite(flat[start:start + _CHUNK]).all())
           for start in range(0, flat.numel(), _CHUNK)):
        return
    nan, inf = _count_bad(flat)
    raise CheckpointError(
        f"{where}: tensor {name} holds {nan} NaN and {inf} infinite value(s) of {flat.numel()}; "
        "a model with non-finite weights outputs NaN from the first step (no learning rate fixes "
        "that): use a checkpoint from before the weights went bad, or repair that tensor")


def check_finite_weights(weights: Dict[str, torch.Tensor], where: str) -> None:
    for name, tensor in weights.items():
        check_finite(name, tensor, where)
