"""Attention kernels: the torch path against a float64 dense reference, the blocked sliding-window
path against the dense masked one (values and gradients), and backend choice.

Tolerance: fp32 SDPA against a float64 softmax over the same mask agrees to ~1e-6; 1e-5 absolute.
The blocked path in float64 differs from the dense reference by summation order only (~1e-15);
1e-10 absolute.
"""

import math

import pytest
import torch

from model import kernels
from model.kernels import (FlashAttentionUnavailable, attend, blocked_window_attention,
                           resolve_backend, sliding_window_block, window_block_size)
from tests.fixtures import build_small


def dense_reference(q, k, v, window):
    """Plain float64 attention, one query at a time, keys chosen by the rule in the spec."""
    q, k, v = (t.double() for t in (q, k, v))
    batch, q_len, heads, dim = q.shape
    k_len, kv_heads = k.shape[1], k.shape[2]
    out = torch.zeros(batch, q_len, heads, dim, dtype=torch.float64)
    for i in range(q_len):
        position = k_len - q_len + i
        first = 0 if window is None else max(0, position - window)
        keys = list(range(first, position + 1))
        for h in range(heads):
            g = h // (heads // kv_heads)
            scores = torch.stack([(q[:, i, h] * k[:, j, g]).sum(-1) for j in keys], -1)
            weights = torch.softmax(scores / math.sqrt(dim), dim=-1)
            out[:, i, h] = (weights.unsqueeze(-1) * v[:, keys, g]).sum(1)
    return out


@pytest.mark.parametrize("window", [None, 64, 5])
@pytest.mark.parametrize("q_len, k_len", [(90, 90), (3, 90)])
def test_torch_backend_matches_float64_reference(window, q_len, k_len):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, q_len, 4, 8, generator=gen)
    k = torch.randn(2, k_len, 2, 8, generator=gen)
    v = torch.randn(2, k_len, 2, 8, generator=gen)
    got = attend(q, k, v, window=window, backend="torch")
    torch.testing.assert_close(got.double(), dense_reference(q, k, v, window), rtol=0, atol=1e-5)


def test_window_of_64_holds_65_keys():
    mask = kernels.causal_window_mask(100, 100, 64, torch.device("cpu"))
    assert mask.sum(-1)[99].item() == 65 and mask[99, 35] and not mask[99, 34]


def test_auto_takes_torch_on_cpu():
    assert resolve_backend("auto", torch.device("cpu"), torch.float32) == "torch"


def test_forced_flash_without_flash_attn_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(kernels, "flash_available", lambda: False)
    with pytest.raises(FlashAttentionUnavailable, match=r"attention_backend=torch"):
        resolve_backend("flash", torch.device("cpu"), torch.float32)


def test_forced_flash_on_cpu_tensors_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(kernels, "flash_available", lambda: True)
    with pytest.raises(FlashAttentionUnavailable, match="CUDA tensors"):
        resolve_backend("flash", torch.device("cpu"), torch.float32)


def test_the_start_of_run_line_says_which_kernel_and_why(monkeypatch):
    monkeypatch.setattr(kernels, "flash_available", lambda: False)
    line = kernels.describe_backend("auto", torch.device("cpu"), torch.float32)
    assert "torch scaled_dot_product_attention" in line and "not installed" in line


def dense_masked(q, k, v, window, scale=None):
    """Differentiable dense attention over the full [s, s] mask of ``causal_window_mask`` (GQA by
    repeating K/V heads): what the blocked path must equal."""
    groups = q.shape[2] // k.shape[2]
    k, v = (t.repeat_interleave(groups, dim=2) for t in (k, v))
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    mask = kernels.causal_window_mask(q.shape[1], k.shape[1], window, q.device)
    weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    return torch.einsum("bhqk,bkhd->bqhd", weights, v)


def _qkv(batch, seq, heads, kv_heads, dim, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, seq, n, dim, generator=gen, dtype=dtype).requires_grad_()
            for n in (heads, kv_heads, kv_heads)]


def _value_and_grads(fn, q, k, v):
    out = fn(q, k, v)
    # A weighted sum, so that every output element reaches the gradients with its own weight.
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    return (out, *torch.autograd.grad((out * weights).sum(), (q, k, v)))


@pytest.mark.parametrize("batch, seq, heads, kv_heads, window, block", [
    (2, 300, 4, 2, 64, 64),    # GQA, batch 2, seq not a multiple of the block
    (1, 256, 2, 2, 64, 64),    # whole blocks
    (1, 40, 4, 2, 64, 64),     # seq < block, window >= seq
    (2, 100, 4, 1, 0, 64),     # window 0: each query sees itself only
    (1, 100, 2, 2, 1, 32),     # window 1
    (1, 70, 2, 1, 5, 3),       # block < window: padded keys reach past the first block
    (1, 130, 4, 2, 64, 128),   # block > window
])
def test_blocked_window_path_equals_the_dense_masked_one(batch, seq, heads, kv_heads, window,
                                                         block):
    q, k, v = _qkv(batch, seq, heads, kv_heads, 8, torch.float64)
    scale = 0.3  # a softmax_scale other than 1/sqrt(d) must reach the kernel
    got = _value_and_grads(lambda *t: blocked_window_attention(*t, window, block, scale), q, k, v)
    want = _value_and_grads(lambda *t: dense_masked(*t, window, scale), q, k, v)
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-10, msg=lambda m: f"{name}: {m}")


def test_blocked_window_path_in_float32_matches_float64():
    q, k, v = _qkv(2, 300, 4, 2, 16, torch.float32)
    got = _value_and_grads(lambda *t: blocked_window_attention(*t, 64, 64), q, k, v)
    want = _value_and_grads(lambda *t: dense_masked(*(x.double() for x in t), 64), q, k, v)
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        torch.testing.assert_close(g.double(), w.double(), rtol=0, atol=1e-5,
                                   msg=lambda m: f"{name}: {m}")


def test_block_is_the_smallest_multiple_of_64_that_holds_the_window():
    assert [window_block_size(w) for w in (1, 64, 65, 200)] == [64, 64, 128, 256]
    assert sliding_window_block(8192, 8192, 64) == 64  # plt_1b's local branch at seq 8192


def test_long_windowed_training_calls_take_the_blocked_path(monkeypatch):
    calls = []
    blocked = kernels.blocked_window_attention
    monkeypatch.setattr(kernels, "blocked_window_attention",
                        lambda *args: calls.append(args[-2]) or blocked(*args))
    q, k, v = _qkv(1, 256, 4, 2, 8, torch.float32)
    got = attend(q, k, v, window=64, backend="torch")  # 256 = 2 (B + w): the shortest blocked
    assert calls == [64]
    torch.testing.assert_close(got.double(), dense_masked(q.double(), k.double(), v.double(), 64),
                               rtol=0, atol=1e-5)
    attend(q[:, :255], k[:, :255], v[:, :255], window=64, backend="torch")  # short: dense
    attend(q, k, v, backend="torch")                                      # no window
    attend(q[:, -1:], k, v, window=64, backend="torch")                   # decoding
    assert calls == [64]


@pytest.mark.usefixtures("megatron_world")
def test_model_logits_do_not_change_when_every_window_runs_blocked(monkeypatch):
    tokens = torch.randint(0, 128, (2, 40), generator=torch.Generator().manual_seed(1))
    model = build_small(num_loops=3, swa_window=4)
    with torch.no_grad():
        dense = model(tokens)
    forced = []
    monkeypatch.setattr(kernels, "sliding_window_block", lambda q_len, k_len, window: (
        forced.append(window) or 16) if window is not None and q_len == k_len else None)
    with torch.no_grad():
        blocked = model(tokens)
    assert forced  # the local branches did run blocked
    torch.testing.assert_close(blocked, dense, rtol=0, atol=1e-5)
