"""Attention kernels: the torch path against a float64 dense reference, and backend choice.

Tolerance: fp32 SDPA against a float64 softmax over the same mask agrees to ~1e-6; 1e-5 absolute.
"""

import math

import pytest
import torch

from model import kernels
from model.kernels import FlashAttentionUnavailable, attend, resolve_backend


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
