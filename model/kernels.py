"""Attention kernels behind one function: ``attend``.

Layout is flash-attn's: q ``[batch, q_len, heads, head_dim]``, k/v ``[batch, k_len, kv_heads,
head_dim]`` (GQA: heads a multiple of kv_heads). Attention is causal with the last query aligned to
the last key (flash-attn's convention; it matters when q_len < k_len, as in decoding): query i sits
at absolute position ``k_len - q_len + i`` and sees keys ``j <= that position``. With ``window=w``
it also sees only keys ``j >= position - w``: w keys back plus itself, w + 1 in all, which is
flash-attn's ``window_size=(w, 0)`` (PLT_SPEC "Attention in loops r >= 2": swa_window=64 -> 65 keys).

Backends: ``torch`` (``scaled_dot_product_attention``; any device) and ``flash`` (flash-attn 2,
CUDA, fp16/bf16). ``auto`` takes flash when flash-attn imports and the tensors are on a GPU in a
dtype it supports, torch otherwise.

The torch backend runs a windowed call over a long sequence (training and prefill: q_len == k_len)
blocked (``blocked_window_attention``): queries in blocks of B, each block over only the B + w keys
it can see, in one batched SDPA call. SDPA has no sliding-window kernel, and the dense call with a
[q_len, k_len] mask computes and masks all S^2 scores for S (w + 1) that count.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn.functional as F


class FlashAttentionUnavailable(RuntimeError):
    pass


@functools.lru_cache(maxsize=1)
def _flash_attn_func():
    """flash-attn's kernel, or None when the package does not import (CPU machines, no GPU extra)."""
    try:
        from flash_attn import flash_attn_func
    except Exception:  # ImportError, or a CUDA-less build failing at import
        return None
    return flash_attn_func


def flash_available() -> bool:
    return _flash_attn_func() is not None


def resolve_backend(requested: str, device: torch.device, dtype: torch.dtype) -> str:
    """The backend that ``attend`` will run for ``requested`` (auto|torch|flash) on these tensors."""
    if requested == "torch":
        return "torch"
    flash_fits = device.type == "cuda" and dtype in (torch.float16, torch.bfloat16)
    if requested == "flash":
        if not flash_available():
            raise FlashAttentionUnavailable(
                "model.attention_backend=flash but flash-attn does not import here; install the "
                "GPU extra (pip install -e '.[gpu]') on a CUDA machine, or use "
                "model.attention_backend=torch (or auto)"
            )
        if not flash_fits:
            raise FlashAttentionUnavailable(
                f"model.attention_backend=flash needs CUDA tensors in fp16/bf16, got {device} "
                f"{dtype}; use model.attention_backend=auto or torch"
            )
        return "flash"
    if requested == "auto":
        return "flash" if flash_fits and flash_available() else "torch"
    raise ValueError(f"attention backend {requested!r}; use auto, torch or flash")


def describe_backend(requested: str, device: torch.device, dtype: torch.dtype) -> str:
    """One line for the start-of-run log: which kernel the attention will run, and why."""
    chosen = resolve_backend(requested, device, dtype)
    if chosen == "flash":
        import flash_attn

        return (f"attention: flash-attn {flash_attn.__version__} (causal; local branch "
                f"window_size=(swa_window, 0)); decoding uses torch SDPA with cache masks")
    reason = ("requested" if requested == "torch" else
              "flash-attn not installed" if not flash_available() else
              f"flash-attn needs CUDA fp16/bf16 tensors, these are {device.type} {dtype}")
    return f"attention: torch scaled_dot_product_attention ({reason})"


def causal_window_mask(
    q_len: int, k_len: int, window: Optional[int], device: torch.device
) -> torch.Tensor:
    """Boolean ``[q_len, k_len]`` mask, True where a query may attend (see the module docstring)."""
    q_pos = torch.arange(k_len - q_len, k_len, device=device).unsqueeze(1)
    k_pos = torch.arange(k_len, device=device).unsqueeze(0)
    allowed = k_pos <= q_pos
    if window is not None:
        allowed = allowed & (k_pos >= q_pos - window)
    return allowed


# Queries per block of the blocked window path are a multiple of this: the fused SDPA kernels tile
# queries and keys by 64 (or 128), so blocks of whole tiles waste no partial tile.
WINDOW_BLOCK_MULTIPLE = 64


def window_block_size(window: int) -> int:
    """Queries per block for a window of ``window`` keys back: the smallest multiple of 64 that is
    >= window (64 for swa_window=64). B >= w keeps the padding before position 0 inside the first
    block; a small B wastes the least compute (each query scores B + w keys for its w + 1) at the
    price of copying K/V (B + w) / B times (2x for w = B = 64)."""
    return WINDOW_BLOCK_MULTIPLE * max(1, -(-window // WINDOW_BLOCK_MULTIPLE))


def sliding_window_block(q_len: int, k_len: int, window: Optional[int]) -> Optional[int]:
    """The block size when the torch backend runs this call blocked, None when it runs dense.

    Blocked: a window over a sequence at least 2 (B + w) long with q_len == k_len (training and
    prefill); the dense call costs S^2 scores, the blocked one about S (B + w), so from there on it
    does at most half the work. Decoding (q_len != k_len) and short sequences stay dense."""
    if window is None or q_len != k_len:
        return None
    block = window_block_size(window)
    return block if k_len >= 2 * (block + window) else None


def _block_window_mask(blocks: int, block: int, window: int, device) -> torch.Tensor:
    """Bool ``[blocks, block, block + window]``: True where query t of block i may see key u of the
    block's span, which starts at position i * block - window. The rule of the module docstring,
    position - w <= key <= position, reads t <= u <= t + w in every block; keys before position 0
    (the left padding, in the first block(s)) are masked too."""
    t = torch.arange(block, device=device).unsqueeze(1)
    u = torch.arange(block + window, device=device).unsqueeze(0)
    in_window = (u >= t) & (u <= t + window)                            # [block, block + w]
    first_key = torch.arange(blocks, device=device).unsqueeze(1) * block - window
    real_key = (first_key + u) >= 0                                     # [blocks, block + w]
    return in_window.unsqueeze(0) & real_key.unsqueeze(1)


def blocked_window_attention(q, k, v, window: int, block: int, softmax_scale=None):
    """Causal sliding-window attention for q_len == k_len in blocks: queries [i B, (i+1) B) attend
    to keys [i B - w, (i+1) B). K/V are padded with w zero rows in front (and, like the queries,
    behind up to whole blocks), cut into overlapping spans of B + w rows by ``unfold`` (a view,
    copied by the reshape into a batch of spans only when batch > 1), and all (batch x blocks)
    spans go through one SDPA call with a [B, B + w] mask per block. Padded keys in front are
    masked; those behind are seen only by padded queries, whose rows are dropped. Same layout and
    result as ``attend`` with ``window``; any device and dtype, differentiable."""
    batch, seq, heads, dim = q.shape
    kv_heads = k.shape[2]
    blocks = -(-seq // block)
    tail = blocks * block - seq
    if tail:
        q = F.pad(q, (0, 0, 0, 0, 0, tail))
    # A view when batch is 1 or q is [b, s]-contiguous; the model's q ([s, b]-major) is copied.
    q_blocks = q.reshape(batch * blocks, block, heads, dim)

    def spans(t):  # [batch, seq, kv_heads, dim] -> [batch * blocks, block + window, kv_heads, dim]
        padded = F.pad(t, (0, 0, 0, 0, window, tail))
        windows = padded.unfold(1, block + window, block)  # [batch, blocks, kv_heads, dim, B + w]
        return windows.permute(0, 1, 4, 2, 3).reshape(batch * blocks, block + window, kv_heads, dim)

    mask = _block_window_mask(blocks, block, window, q.device).repeat(batch, 1, 1).unsqueeze(1)
    out = F.scaled_dot_product_attention(
        q_blocks.transpose(1, 2), spans(k).transpose(1, 2), spans(v).transpose(1, 2),
        attn_mask=mask, scale=softmax_scale, enable_gqa=True,
    )  # [batch * blocks, heads, block, dim]
    return out.transpose(1, 2).reshape(batch, blocks * block, heads, dim)[:, :seq]


def _torch_attend(q, k, v, window, softmax_scale):
    q_len, k_len = q.shape[1], k.shape[1]
    block = sliding_window_block(q_len, k_len, window)
    if block is not None:
        return blocked_window_attention(q, k, v, window, block, softmax_scale)
    # SDPA wants [batch, heads, seq, dim].
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    if window is None and q_len == k_len:
        out = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, scale=softmax_scale, enable_gqa=True
        )
    else:
        mask = causal_window_mask(q_len, k_len, window, q.device)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, scale=softmax_scale, enable_gqa=True
        )
    return out.transpose(1, 2)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    window: Optional[int] = None,
    backend: str = "auto",
    softmax_scale: Optional[float] = None,
    key_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Causal (optionally sliding-window) attention; returns ``[batch, q_len, heads, head_dim]``.

    ``key_mask`` (bool ``[batch, k_len]``, decoding with one query per row) replaces the causal
    rule by an explicit choice of keys per row: cache slots that hold this row's visible
    positions. Masked calls take the torch path on every device.
    """
    if key_mask is not None:
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
            attn_mask=key_mask[:, None, None, :], scale=softmax_scale, enable_gqa=True,
        )
        return out.transpose(1, 2)
    chosen = resolve_backend(backend, q.device, q.dtype)
    if chosen == "flash":
        return _flash_attn_func()(
            q, k, v,
            softmax_scale=softmax_scale,
            causal=True,
            window_size=(-1 if window is None else window, 0),
        )
    return _torch_attend(q, k, v, window, softmax_scale)
