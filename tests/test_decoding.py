"""Cached cross-loop-parallel decoding equals the full forward (docs/spec.md#decoding).

Tolerance: the cached path computes the same float32 operations as the full forward on fewer
rows and in another order; logits agree to ~1e-6, checked at 1e-4 absolute on O(1) logits.
"""

import pytest
import torch

from model.decoding import DecodeCache, LoopDecoder
from model.generation import generate, sample
from tests.fixtures import build_small

pytestmark = pytest.mark.usefixtures("megatron_world")

WINDOW = 8  # prompts of 20 and 13 tokens are longer than the window's 9 keys


def _prompts_and_continuations(steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, 128, (n,), generator=gen) for n in (20, 13)]
    continuations = torch.randint(0, 128, (2, steps), generator=gen)
    return prompts, continuations


def _check_against_full_forward(model, mode, steps=12):
    prompts, continuations = _prompts_and_continuations(steps)
    decoder = LoopDecoder(model, batch_size=2, max_length=40, mode=mode)
    logits = decoder.prefill(prompts)
    sequences = [p.clone() for p in prompts]
    for step in range(steps + 1):
        with torch.no_grad():
            for row, sequence in enumerate(sequences):
                full = model(sequence[None])[0, -1]
                torch.testing.assert_close(logits[row], full, rtol=0, atol=1e-4,
                                           msg=f"row {row}, step {step}")
        if step == steps:
            break
        token = continuations[:, step]
        sequences = [torch.cat([s, token[i:i + 1]]) for i, s in enumerate(sequences)]
        logits = decoder.step(token)


@pytest.mark.parametrize("num_loops", [1, 2, 3, 4])
def test_parallel_decoding_equals_full_forward(num_loops):
    _check_against_full_forward(build_small(num_loops=num_loops, swa_window=WINDOW), "parallel")


@pytest.mark.parametrize("num_loops", [2, 3])
def test_sequential_decoding_equals_full_forward(num_loops):
    _check_against_full_forward(build_small(num_loops=num_loops, swa_window=WINDOW), "sequential")


def test_vanilla_looped_models_decode_too():
    _check_against_full_forward(build_small(num_loops=3, shared_kv=False), "parallel", steps=5)
    _check_against_full_forward(build_small(num_loops=3, clp=False, swa_window=WINDOW),
                                "sequential", steps=5)


def test_query_gate_models_decode_like_the_full_forward():
    """gate_input=query: with CLP in one forward of all loops, and in the IQuest-Coder-V1 Loop
    shape (clp=false, so sequentially)."""
    _check_against_full_forward(build_small(num_loops=3, gate_input="query", swa_window=WINDOW),
                                "parallel", steps=6)
    _check_against_full_forward(build_small(num_loops=2, clp=False, gate_input="query",
                                            swa_window=WINDOW), "sequential", steps=6)


def test_clp_false_refuses_parallel_decoding():
    with pytest.raises(ValueError, match="sequential"):
        LoopDecoder(build_small(num_loops=2, clp=False), 1, 16, mode="parallel")


def test_cache_grows_with_loops_only_by_the_windows():
    """Bytes of the cache for R loops = R=1's + (R-1) x (a 65-token ring per layer + one saved
    hidden vector) per sequence, whatever the cache's max_length."""
    batch, layers, kv_heads, head_dim, hidden = 3, 2, 2, 16, 64  # build_small's shape
    for max_length in (64, 512):
        base = DecodeCache(build_small(num_loops=1), batch, max_length).nbytes()
        assert base == 2 * layers * batch * max_length * kv_heads * head_dim * 4 + batch * 8
        for loops in (2, 3, 4):
            ring = layers * batch * 65 * (2 * kv_heads * head_dim * 4 + 8)  # K, V fp32 + position
            extra = (loops - 1) * (ring + batch * hidden * 4)
            size = DecodeCache(build_small(num_loops=loops, swa_window=64), batch,
                               max_length).nbytes()
            assert size == base + extra, (loops, max_length)


def _greedy_by_full_forward(model, prompt, new_tokens):
    """The reference: greedy continuation by the uncached full forward."""
    sequence = prompt
    with torch.no_grad():
        for _ in range(new_tokens):
            sequence = torch.cat([sequence, model(sequence[None])[0, -1].argmax()[None]])
    return sequence


def test_generate_continues_prompts_greedily_like_the_full_forward():
    model = build_small(num_loops=2, swa_window=WINDOW)
    prompts, _ = _prompts_and_continuations(0)
    out = generate(model, prompts, max_new_tokens=6)
    for prompt, sequence in zip(prompts, out):
        assert torch.equal(sequence, _greedy_by_full_forward(model, prompt, 6))


def test_generate_decodes_a_clp_false_model_sequentially_by_default():
    """The trainer's end-of-run sample calls generate without a mode: a clp=false run (the loop
    sweep's control) must not fail there."""
    model = build_small(num_loops=2, clp=False, swa_window=WINDOW)
    prompts, _ = _prompts_and_continuations(0)
    for prompt, sequence in zip(prompts, generate(model, prompts, max_new_tokens=4)):
        assert torch.equal(sequence, _greedy_by_full_forward(model, prompt, 4))


def test_sample_takes_a_batch_tensor_and_top_p_keeps_the_top_token():
    model = build_small(num_loops=2)
    prompt_ids = torch.randint(0, 128, (2, 5), generator=torch.Generator().manual_seed(3))
    out = sample(model, prompt_ids, max_new_tokens=4)
    assert out.shape == (2, 9) and torch.equal(out[:, :5], prompt_ids)
    # top_p tiny: only the most likely token survives, so sampling equals greedy.
    hot = sample(model, prompt_ids, 4, temperature=1.0, top_p=1e-6,
                 generator=torch.Generator().manual_seed(0))
    assert torch.equal(hot, out)
