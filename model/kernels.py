"""Attention kernels: one class per backend (``BACKENDS``), and ``attend``, the functional form.

Layout is flash-attn's: q ``[batch, q_len, heads, head_dim]``, k/v ``[batch, k_len, kv_heads,
head_dim]`` (GQA: heads a multiple of kv_heads). Attention is causal with the last query aligned to
the last key (flash-attn's convention; it matters when q_len < k_len, as in decoding): query i sits
at absolute position ``k_len - q_len + i`` and sees keys ``j <= that position``. With ``window=w``
it also sees only keys ``j >= position - w``: w keys back plus itself, w + 1 in all, which is
flash-attn's ``window_size=(w, 0)`` (docs/spec.md#window: swa_window=64 -> 65 keys).

Backends (model.attention_backend): ``torch`` (``scaled_dot_product_attention``; any device),
``flash`` (flash-attn 2, CUDA, fp16/bf16) and ``flex`` (torch's flex_attention with block masks,
model/flex_attention.py: compiled on CUDA, eager and inference-only on CPU). ``auto`` takes flash
when flash-attn imports and the tensors are CUDA fp16/bf16, on other CUDA tensors the backend the
GPU check measured fastest (``AUTO_CUDA_WITHOUT_FLASH``), torch elsewhere.

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

from model.flex_attention import flex_attend, flex_available


class AttentionBackendUnsupported(RuntimeError):
    """A backend that cannot run on these tensors here; the message names the setting and the fix."""


FlashAttentionUnavailable = AttentionBackendUnsupported  # the name callers caught before flex


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


# -- the backends: one class each, chosen once per device and dtype ----------------------------
class AttentionBackend:
    """One attention kernel: ``backend(q, k, v, window, softmax_scale)`` in the layout above.
    ``assert_supported`` raises AttentionBackendUnsupported (naming the setting and the fix) where
    the kernel cannot run; ``backward``: the call will be differentiated (training)."""

    name = ""

    def assert_supported(self, device: torch.device, dtype: torch.dtype,
                         backward: bool = False) -> None:
        pass

    def __call__(self, q, k, v, window: Optional[int], softmax_scale: Optional[float]):
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


class TorchBackend(AttentionBackend):
    """scaled_dot_product_attention, the window blocked over long sequences; any device, dtype."""

    name = "torch"

    def __call__(self, q, k, v, window, softmax_scale):
        return _torch_attend(q, k, v, window, softmax_scale)

    def describe(self) -> str:
        return ("torch scaled_dot_product_attention (local branch blocked by "
                f"{WINDOW_BLOCK_MULTIPLE}-query blocks over long sequences)")


class FlashBackend(AttentionBackend):
    name = "flash"

    def assert_supported(self, device, dtype, backward=False):
        if not flash_available():
            raise AttentionBackendUnsupported(
                "model.attention_backend=flash but flash-attn does not import here; install the "
                "GPU extra (pip install -e '.[gpu]') on a CUDA machine, or use "
                "model.attention_backend=torch, flex (or auto)")
        if device.type != "cuda" or dtype not in (torch.float16, torch.bfloat16):
            raise AttentionBackendUnsupported(
                f"model.attention_backend=flash needs CUDA tensors in fp16/bf16, got {device} "
                f"{dtype}; use model.attention_backend=auto, torch or flex")

    def __call__(self, q, k, v, window, softmax_scale):
        return _flash_attn_func()(q, k, v, softmax_scale=softmax_scale, causal=True,
                                  window_size=(-1 if window is None else window, 0))

    def describe(self) -> str:
        import flash_attn

        return (f"flash-attn {flash_attn.__version__} (causal; local branch "
                f"window_size=(swa_window, 0))")


class FlexBackend(AttentionBackend):
    """torch flex_attention with block masks (model/flex_attention.py): compiled on CUDA, eager on
    CPU, where torch has no flex backward."""

    name = "flex"

    def assert_supported(self, device, dtype, backward=False):
        if not flex_available():
            raise AttentionBackendUnsupported(
                f"model.attention_backend=flex needs torch >= 2.5 (flex_attention); this is torch "
                f"{torch.__version__}: use model.attention_backend=torch or auto")
        if backward and device.type == "cpu":
            raise AttentionBackendUnsupported(
                "model.attention_backend=flex cannot train on CPU (torch's flex_attention has no "
                "CPU backward; it serves CPU inference only): use model.attention_backend=torch "
                "or auto for a CPU run")

    def __call__(self, q, k, v, window, softmax_scale):
        if q.device.type == "cpu" and torch.is_grad_enabled() and any(
                t.requires_grad for t in (q, k, v)):
            self.assert_supported(q.device, q.dtype, backward=True)
        return flex_attend(q, k, v, window, softmax_scale)

    def describe(self) -> str:
        how = "compiled" if torch.cuda.is_available() else "eager"
        return f"torch flex_attention, {how}, block masks (causal; causal + window of swa_window)"


BACKENDS = {cls.name: cls() for cls in (TorchBackend, FlashBackend, FlexBackend)}
ATTENTION_BACKENDS = ("auto", *BACKENDS)  # model.attention_backend's values, stated here only

# What ``auto`` takes on CUDA when flash-attn does not import. bench/gpu_check.sh measures the
# torch and flex backends per R on the GPU and prints which was faster; this constant follows that
# measurement: on an H200 (2026-12-04, plt_1b, 8192 tokens) torch was 10% faster than flex at R=1
# and 7% at R=2 (README, GPU).
AUTO_CUDA_WITHOUT_FLASH = "torch"


def resolve_backend(requested: str, device: torch.device, dtype: torch.dtype,
                    backward: bool = False) -> str:
    """The backend name ``attend`` runs for ``requested`` (one of ATTENTION_BACKENDS) on these
    tensors; raises AttentionBackendUnsupported where a named backend cannot run."""
    if requested == "auto":
        if device.type != "cuda":
            return "torch"
        if dtype in (torch.float16, torch.bfloat16) and flash_available():
            return "flash"
        return AUTO_CUDA_WITHOUT_FLASH
    if requested not in BACKENDS:
        raise ValueError(f"attention backend {requested!r}; use one of {ATTENTION_BACKENDS}")
    BACKENDS[requested].assert_supported(device, dtype, backward)
    return requested


def backend_for(requested: str, device: torch.device, dtype: torch.dtype,
                backward: bool = False) -> AttentionBackend:
    return BACKENDS[resolve_backend(requested, device, dtype, backward)]


def describe_backend(requested: str, device: torch.device, dtype: torch.dtype,
                     backward: bool = True) -> str:
    """One line for the start-of-run log: which kernel the attention will run, and why. A backend
    that cannot run here raises AttentionBackendUnsupported (a config error: exit status 2)."""
    chosen = resolve_backend(requested, device, dtype, backward)
    if requested != "auto":
        reason = "requested"
    elif chosen == "flash":
        reason = "auto: flash-attn imports, CUDA fp16/bf16"
    elif device.type != "cuda":
        reason = f"auto: {device.type} tensors" + (
            "" if flash_available() else "; flash-attn not installed")
    elif not flash_available():
        reason = "auto: flash-attn not installed; the GPU check's fastest without it"
    else:
        reason = f"auto: flash-attn needs fp16/bf16 tensors, these are {dtype}"
    return (f"attention: {BACKENDS[chosen].describe()} ({reason}); decoding uses torch SDPA with "
            f"cache masks")


def masked_attend(q, k, v, key_mask, softmax_scale=None):
    """Decoding: each row's query over the cache slots ``key_mask`` (bool ``[batch, k_len]``)
    chooses, replacing the causal rule; torch SDPA on every device."""
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
        attn_mask=key_mask[:, None, None, :], scale=softmax_scale, enable_gqa=True,
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
    The functional form (tests, benchmarks); the model's attention chooses its backend once
    (model/attention.py). ``key_mask``: ``masked_attend``."""
    if key_mask is not None:
        return masked_attend(q, k, v, key_mask, softmax_scale)
    return backend_for(backend, q.device, q.dtype)(q, k, v, window, softmax_scale)
