"""The flex attention backend (model/flex_attention.py) against a float64 reference, and how
backends are named, chosen and refused (model/kernels.py).

On CPU flex runs eager (torch's reference flex implementation, forward only). Tolerance: in float64
the flex path differs from the dense masked reference by summation order only: 1e-10 absolute; in
float32 a softmax over <= 200 keys of O(1) scores agrees to ~1e-6: 1e-5 absolute.
"""

import pytest
import torch

from model import kernels
from model.flex_attention import flex_attend
from model.kernels import (ATTENTION_BACKENDS, AttentionBackendUnsupported, attend,
                           describe_backend, resolve_backend)
from pretrain.errors import describe_user_error
from tests.fixtures import build_small
from tests.test_kernels import dense_masked, dense_reference


def _qkv(batch, q_len, k_len, heads, kv_heads, dim, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, n_len, n, dim, generator=gen, dtype=dtype)
            for n_len, n in ((q_len, heads), (k_len, kv_heads), (k_len, kv_heads))]


# Windows of docs/spec.md#window's rule: 1 key back, just under / at / over one 64-block, and longer than the
# sequence (every earlier key: the plain causal result).
@pytest.mark.parametrize("window", [None, 1, 63, 64, 65, 500])
@pytest.mark.parametrize("q_len, k_len", [(200, 200), (1, 200), (3, 130)])
def test_flex_matches_the_float64_reference(window, q_len, k_len):
    q, k, v = _qkv(2, q_len, k_len, 4, 2, 16, torch.float64)          # GQA: 2 heads per group
    scale = 0.3  # a softmax_scale other than 1/sqrt(d) must reach the kernel
    got = flex_attend(q, k, v, window, scale)
    torch.testing.assert_close(got, dense_masked(q, k, v, window, scale), rtol=0, atol=1e-10)


def test_flex_in_float32_matches_float64_through_attend():
    q, k, v = _qkv(1, 150, 150, 4, 1, 8, torch.float32, seed=3)        # GQA: 4 heads on one group
    for window in (None, 64):
        got = attend(q, k, v, window=window, backend="flex")
        exact = dense_masked(q.double(), k.double(), v.double(), window)
        torch.testing.assert_close(got.double(), exact, rtol=0, atol=1e-5)


def test_flex_follows_the_spec_rule_key_by_key():
    # test_kernels' per-query reference picks keys position - w .. position by hand, independent
    # of causal_window_mask (which dense_masked above shares with the kernels' docstring).
    q, k, v = _qkv(1, 5, 70, 2, 1, 8, torch.float64)
    for window in (None, 1, 64, 65):
        torch.testing.assert_close(flex_attend(q, k, v, window), dense_reference(q, k, v, window),
                                   rtol=0, atol=1e-10)


def test_a_window_longer_than_the_sequence_is_plain_causal():
    q, k, v = _qkv(1, 100, 100, 2, 2, 8, torch.float64)
    torch.testing.assert_close(flex_attend(q, k, v, 100), flex_attend(q, k, v, None),
                               rtol=0, atol=1e-12)


def test_the_backend_names_are_stated_once_and_include_flex():
    from planning import memory

    assert ATTENTION_BACKENDS == ("auto", "torch", "flash", "flex")
    assert memory.ATTENTION_BACKENDS is ATTENTION_BACKENDS


def test_flex_is_refused_for_cpu_training_with_the_fix():
    with pytest.raises(AttentionBackendUnsupported, match="attention_backend=torch"):
        resolve_backend("flex", torch.device("cpu"), torch.float32, backward=True)
    q, k, v = (t.requires_grad_() for t in _qkv(1, 8, 8, 2, 2, 8, torch.float32))
    with pytest.raises(AttentionBackendUnsupported, match="cannot train on CPU"):
        attend(q, k, v, backend="flex")
    with pytest.raises(AttentionBackendUnsupported) as refused:  # the trainer's start line
        describe_backend("flex", torch.device("cpu"), torch.float32)
    status, message = describe_user_error(refused.value)
    assert status == 2 and "cannot train on CPU" in message
    assert "flex_attention" in describe_backend("flex", torch.device("cpu"), torch.float32,
                                                backward=False)


def test_auto_on_cuda_without_flash_takes_the_measured_constant(monkeypatch):
    monkeypatch.setattr(kernels, "flash_available", lambda: False)
    cuda = torch.device("cuda")
    for fastest in ("flex", "torch"):
        monkeypatch.setattr(kernels, "AUTO_CUDA_WITHOUT_FLASH", fastest)
        assert resolve_backend("auto", cuda, torch.bfloat16) == fastest
    monkeypatch.setattr(kernels, "flash_available", lambda: True)
    assert resolve_backend("auto", cuda, torch.bfloat16) == "flash"
    assert resolve_backend("auto", torch.device("cpu"), torch.bfloat16) == "torch"


@pytest.mark.usefixtures("megatron_world")
def test_model_with_flex_equals_the_torch_backend_and_chooses_once(monkeypatch):
    tokens = torch.randint(0, 128, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = build_small(num_loops=3, swa_window=4)(tokens)
        model = build_small(num_loops=3, swa_window=4, attention_backend="flex")
        chosen = []
        backend_for = kernels.backend_for
        monkeypatch.setattr("model.attention.backend_for",
                            lambda *args: chosen.append(args) or backend_for(*args))
        got = model(tokens)
        model(tokens)
    layers = len(model.decoder.layers)
    assert [c[0] for c in chosen] == ["flex"] * layers  # once per layer, not once per call
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_the_trainer_refuses_flex_on_cpu_with_exit_2(tmp_path):
    from tests.fixtures import SMALL, output_of, run_trainer, small_data

    result = run_trainer(tmp_path, "model.attention_backend=flex", "train.max_steps=3", *SMALL,
                         *small_data())
    out = output_of(result)
    assert result.returncode == 2 and "Traceback" not in out, out
    assert "config error" in out and "model.attention_backend=torch" in out, out
