"""The ``flex`` attention backend: torch's ``flex_attention`` with block masks.

A sliding-window kernel wherever torch runs, flash-attn or not. The rule is model/kernels.py's
(flash-attn's convention): query i of q_len sits at position ``k_len - q_len + i`` and sees keys
``j <= position``; with ``window=w`` also only ``j >= position - w`` (w + 1 keys:
docs/spec.md#window, swa_window=64 -> 65 keys). The block mask tells the kernel which 128 x 128 tiles hold any allowed
key, so the local branch at sequence S computes about S (w + 128) scores, not S^2.

On CUDA the kernel is ``torch.compile(flex_attention)`` (one compile per shape; a fused Triton
kernel, forward and backward). On CPU it runs eager: torch's reference implementation, which
materialises the scores (fine for the tests and small CPU runs) and has no backward on CPU, so
``flex`` is refused for CPU training (model/kernels.py ``FlexBackend``).
"""

from __future__ import annotations

import functools
import warnings
from typing import Optional

import torch


def flex_available() -> bool:
    """Whether this torch has flex_attention (torch >= 2.5)."""
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def causal_window_mask_mod(offset: torch.Tensor, window: torch.Tensor):
    """The mask rule as flex's ``mask_mod``. One function for both branches (plain causal is a
    window of k_len) whose numbers are captured 0-d tensors, not Python ints: the compiled kernel
    then sees the same code with different buffers, and one compile serves every window."""

    def mask_mod(b, h, q_idx, kv_idx):
        position = q_idx + offset
        return (kv_idx <= position) & (kv_idx >= position - window)

    return mask_mod


@functools.lru_cache(maxsize=32)
def block_mask(q_len: int, k_len: int, window: Optional[int], device: torch.device):
    """The BlockMask of the causal (and, with ``window``, sliding-window) rule above. Cached: a
    training run has one shape per branch, and building the mask scans q_len x k_len once."""
    from torch.nn.attention.flex_attention import create_block_mask

    numbers = [torch.tensor(n, device=device) for n in (k_len - q_len,
                                                        k_len if window is None else window)]
    return create_block_mask(causal_window_mask_mod(*numbers), B=None, H=None, Q_LEN=q_len,
                             KV_LEN=k_len, device=device)


# Compiled graphs per process before torch.compile gives up and runs flex eagerly, which would
# materialise [heads, S, S] scores (tens of GB at S=8192): one per input shape and grad mode.
RECOMPILE_LIMIT = 64


@functools.lru_cache(maxsize=1)
def _compiled_kernel():
    """flex_attention compiled once per process (torch caches a graph per input shape)."""
    import torch._dynamo.config
    from torch.nn.attention.flex_attention import flex_attention

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit,
                                               RECOMPILE_LIMIT)
    return torch.compile(flex_attention, dynamic=False)


def _eager_kernel(*args, **kwargs):
    from torch.nn.attention.flex_attention import flex_attention

    with warnings.catch_warnings():
        # Eager on CPU is the deliberate choice here (the tests' reference path), not a mistake.
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile")
        return flex_attention(*args, **kwargs)


def flex_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: Optional[int] = None,
                softmax_scale: Optional[float] = None) -> torch.Tensor:
    """Causal (optionally sliding-window) attention in flash layout: q ``[b, q_len, heads, d]``,
    k/v ``[b, k_len, kv_heads, d]`` -> ``[b, q_len, heads, d]``."""
    q_len, k_len = q.shape[1], k.shape[1]
    mask = block_mask(q_len, k_len, window, q.device)
    kernel = _compiled_kernel() if q.device.type == "cuda" else _eager_kernel
    out = kernel(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=mask,
                 scale=softmax_scale, enable_gqa=q.shape[2] != k.shape[2])
    return out.transpose(1, 2)
