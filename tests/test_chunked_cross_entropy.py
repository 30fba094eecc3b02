"""The chunked head + cross-entropy (model/chunked_cross_entropy.py) against the unfused path.

Tolerances: float64 differs from the unfused loss by summation order only: 1e-12 absolute. float32:
the same matmuls over row chunks, the softmax in fp32, the weight gradient summed over chunks:
1e-5 relative to each tensor's largest entry (rtol 1e-5 with atol 1e-6 on O(1) values).
"""

import math

import pytest
import torch
from megatron.core import tensor_parallel

from model import ModelConfig
from model.chunked_cross_entropy import chunk_tokens, linear_cross_entropy
from model.config import ConfigError
from tests.fixtures import build_small


def _inputs(tokens, hidden, vocab, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, hidden, generator=gen, dtype=dtype).requires_grad_()
    w = (torch.randn(vocab, hidden, generator=gen, dtype=dtype) / hidden**0.5).requires_grad_()
    labels = torch.randint(0, vocab, (tokens,), generator=gen)
    upstream = torch.rand(tokens, generator=gen, dtype=torch.float32)  # per-token loss weights
    return x, w, labels, upstream


@pytest.mark.usefixtures("megatron_world")
@pytest.mark.parametrize("dtype, tol", [(torch.float64, dict(rtol=0, atol=1e-12)),
                                        (torch.float32, dict(rtol=1e-5, atol=1e-6))])
@pytest.mark.parametrize("chunk", [1, 7, 64, None])  # 7: a last chunk shorter than the others
def test_chunked_equals_the_unfused_loss_and_gradients(dtype, tol, chunk):
    x, w, labels, upstream = _inputs(50, 16, 97, dtype)
    got = linear_cross_entropy(x, w, labels, chunk)
    got_grads = torch.autograd.grad((got * upstream.to(got.dtype)).sum(), (x, w))
    logits = x @ w.t()
    if dtype == torch.float64:  # megatron's loss computes in fp32 whatever the input: torch's
        want = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    else:  # the model's unfused path at tp=1: full logits, megatron's vocab-parallel loss
        want = tensor_parallel.vocab_parallel_cross_entropy(
            logits.unsqueeze(1), labels.unsqueeze(1)).squeeze(1)
    want_grads = torch.autograd.grad((want * upstream.to(want.dtype)).sum(), (x, w))
    assert got.dtype == want.dtype
    torch.testing.assert_close(got, want, **tol)
    for name, g, ref in zip(("hidden", "weight"), got_grads, want_grads):
        torch.testing.assert_close(g, ref, **tol, msg=lambda m: f"grad of {name}: {m}")


def test_the_forward_never_saves_a_tokens_by_vocab_tensor():
    x, w, labels, _ = _inputs(40, 8, 300, torch.float32)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t,
                                                  lambda t: t):
        linear_cross_entropy(x, w, labels, chunk=8)
    assert saved and max(saved) == w.numel()  # the weight itself; no [40, 300] logits or softmax


def test_chunk_size_keeps_a_chunk_of_logits_at_256_mib():
    assert chunk_tokens(76_800) * 76_800 * 4 <= 2**28 and chunk_tokens(76_800) == 873
    assert chunk_tokens(10**9) == 1


@pytest.mark.usefixtures("megatron_world")
@pytest.mark.parametrize("untie", [True, False])
def test_model_loss_and_gradients_equal_the_unfused_model(untie, monkeypatch):
    # build_small starts every model from the same seed: the same weights with and without chunks
    calls = []
    monkeypatch.setattr("model.plt_model.linear_cross_entropy",
                        lambda *args: calls.append(args) or linear_cross_entropy(*args))
    tokens = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(2))
    results = []
    for chunked in (False, True):
        model = build_small(num_loops=2, untie_embeddings_and_output_weights=untie,
                            chunked_cross_entropy=chunked)
        loss = model(tokens, labels=tokens)
        loss.mean().backward()
        results.append((loss, {n: p.grad for n, p in model.named_parameters()}))
    (want, want_grads), (got, got_grads) = results
    assert len(calls) == 1  # the chunked model took the chunked head, the other did not
    assert got.shape == want.shape == (2, 24)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert got_grads.keys() == want_grads.keys()
    for name in want_grads:
        torch.testing.assert_close(got_grads[name], want_grads[name], rtol=1e-5, atol=1e-6,
                                   msg=lambda m: f"{name}: {m}")


def test_tensor_parallel_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match="chunked_cross_entropy=false"):
        ModelConfig(chunked_cross_entropy=True).validate(tensor_parallel=2)
    ModelConfig(chunked_cross_entropy=True).validate(tensor_parallel=1)


@pytest.mark.usefixtures("megatron_world")
def test_planned_saving_is_the_measured_one():
    from planning import planner
    from tests.test_planner import measure, preset

    seq, batch = 128, 2
    layout = planner.Layout.one_rank(batch, seq_length=seq, bf16=False, attention_backend="torch")
    planned, measured = {}, {}
    for chunked in (False, True):
        cfg = preset("plt_tiny", num_loops=1, attention_backend="torch",
                     chunked_cross_entropy=chunked)
        planned[chunked] = sum(planner.activation_terms(cfg, layout).values())
        measured[chunked], _ = measure(cfg, seq, batch)
    saved = measured[False] - measured[True]
    assert saved >= seq * batch * cfg.vocab_size * 4 * 0.9  # the fp32 softmax is gone
    assert planned[False] - planned[True] == pytest.approx(saved, rel=0.10)


def test_the_trainer_trains_with_the_chunked_head(tmp_path):
    from tests.fixtures import SMALL, output_of, read_metrics, run_trainer, small_data

    result = run_trainer(tmp_path, "model.chunked_cross_entropy=true", "train.max_steps=3",
                         *SMALL, *small_data())
    assert result.returncode == 0, output_of(result)
    rows = read_metrics(tmp_path)
    assert len(rows) == 3 and all(math.isfinite(row["loss"]) for row in rows), rows
