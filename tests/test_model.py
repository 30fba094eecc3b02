"""The PLT model against docs/spec.md: causality, the CLP shift, the window, the gate,
equivalence with megatron's GPTModel, the 7B parameter count and config errors.

Tolerances: fp32 models compared with fp32 references of the same operations in another order
agree to ~1e-6 relative; 1e-5 absolute on O(1) logits leaves room for summation order only.
"""

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from model import ConfigError, ModelConfig, PLTModel
from model.plt_model import shift_one_position
from tests.fixtures import build_small, small_model_config

pytestmark = pytest.mark.usefixtures("megatron_world")

SEQ = 40


def _tokens(batch=2, seq=SEQ, vocab=128, seed=1):
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("num_loops", [1, 2, 3, 4])
def test_changing_token_j_never_changes_earlier_logits(num_loops):
    # A window of 4 keys makes the local branch's window matter within SEQ tokens.
    model = build_small(num_loops=num_loops, swa_window=4)
    tokens = _tokens()
    j = 17
    changed = tokens.clone()
    changed[:, j] = (changed[:, j] + 1) % 128
    with torch.no_grad():
        before, after = model(tokens), model(changed)
    torch.testing.assert_close(after[:, :j], before[:, :j], rtol=0, atol=1e-6)
    assert (after[:, j] - before[:, j]).abs().max() > 1e-4  # and position j itself does change


def test_loop_input_shifts_by_one_position_and_starts_with_the_embedding():
    model = build_small(num_loops=2, clp_emb_scale=0.7, clp_hidden_scale=1.3)
    seq, batch, hidden = 12, 2, 64
    emb = torch.randn(seq, batch, hidden)
    prev = torch.randn(seq, batch, hidden)
    base = model.loop_input(emb, prev)
    # Position 0 gets the embedding term alone.
    torch.testing.assert_close(base[0], 0.7 * emb[0])
    for i in (0, 5, seq - 2):
        bumped = prev.clone()
        bumped[i] += 1.0
        moved = (model.loop_input(emb, bumped) - base).abs().amax(dim=(1, 2))
        assert moved[i + 1] > 0 and moved.count_nonzero() == 1, f"h_{i} reached {moved.nonzero()}"
    # The hidden term is RMSNorm_final(h_{r-1}) scaled by b (normalize_per_loop, default on).
    expected = 0.7 * emb[1:] + 1.3 * model.decoder.final_layernorm(prev)[:-1]
    torch.testing.assert_close(base[1:], expected)


def test_forward_feeds_loop_two_the_shifted_input():
    model = build_small(num_loops=2)
    captured = []
    model.decoder.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    model(_tokens())
    emb, loop2_input = captured
    h1 = model.run_loops(_tokens()).hidden[1]
    torch.testing.assert_close(loop2_input, model.loop_input(emb, h1))


def test_clp_false_feeds_the_previous_loop_output_unchanged():
    model = build_small(num_loops=2, clp=False)
    prev = torch.randn(8, 2, 64)
    assert torch.equal(model.loop_input(torch.randn(8, 2, 64), prev), prev)


def test_sequence_shift_helper():
    h = torch.arange(6.0).view(3, 2, 1)
    shifted = shift_one_position(h, sequence_parallel=False)
    assert shifted[0].abs().sum() == 0 and torch.equal(shifted[1:], h[:-1])


def _attention_outputs(attention, hidden, first_loop_kv, rotary):
    out, _, _ = attention(hidden, hidden, rotary, loop_index=1, first_loop_kv=first_loop_kv)
    return out


def test_loop_two_local_branch_sees_exactly_65_keys():
    """Perturb loop 2's input at position j with loop 1's K/V fixed: only queries i with
    j <= i <= j + 64 may change (i == j through its own query, the rest through key j)."""
    model = build_small(num_loops=2, swa_window=64)
    attention = model.decoder.layers[0].self_attention
    seq, j = 160, 10
    rotary = model.rotary_pos_emb(seq)
    hidden = torch.randn(seq, 1, 64)
    with torch.no_grad():
        _, _, first_kv = attention(torch.randn(seq, 1, 64), None, rotary, loop_index=0)
        bumped = hidden.clone()
        bumped[j] += 1.0
        diff = (_attention_outputs(attention, bumped, first_kv, rotary)
                - _attention_outputs(attention, hidden, first_kv, rotary)).abs().amax(dim=(1, 2))
    changed = (diff > 1e-7).nonzero().flatten().tolist()
    assert changed == list(range(j, j + 65))


def test_gate_starts_at_one_half_and_mixes_the_branches():
    model = build_small(num_loops=2, randomize_gate=False, swa_window=3)
    attention = model.decoder.layers[0].self_attention
    residual = torch.randn(10, 2, 64)
    torch.testing.assert_close(attention.gate(residual, None), torch.full((2, 10, 4, 1), 0.5))
    # Forcing g -> 1 (global only) and g -> 0 (local only) moves the output: both branches count.
    seq, rotary = 10, model.rotary_pos_emb(10)
    hidden = torch.randn(seq, 1, 64)
    with torch.no_grad():
        _, _, first_kv = attention(torch.randn(seq, 1, 64), None, rotary, loop_index=0)
        outputs = []
        for bias in (-30.0, 0.0, 30.0):
            attention.linear_gate.bias.fill_(bias)
            outputs.append(_attention_outputs(attention, hidden, first_kv, rotary))
    local_only, mixed, global_only = outputs
    torch.testing.assert_close(mixed, 0.5 * (local_only + global_only), rtol=1e-5, atol=1e-6)
    assert (local_only - global_only).abs().max() > 1e-3


def test_query_gate_is_each_heads_rotated_query_dot_its_own_row():
    """gate_input=query (IQuest-Coder-V1 Loop): g_h = sigmoid(w_h . q_h + b_h) with q_h the head's
    query after RoPE, W_g [heads, head_dim], no gate norm (model/attention.py cites the source)."""
    model = build_small(num_loops=2, gate_input="query")
    attention = model.decoder.layers[0].self_attention
    assert attention.gate_norm is None and tuple(attention.linear_gate.weight.shape) == (4, 16)
    seq = 10
    hidden = torch.randn(seq, 2, 64)
    with torch.no_grad():
        q, _, _ = attention._project(hidden, model.rotary_pos_emb(seq))  # [b, s, heads, d]
        unrotated, _, _ = attention._project(hidden, None)
        w, b = attention.linear_gate.weight, attention.linear_gate.bias
        expected = torch.stack([torch.sigmoid(q[:, :, h] @ w[h] + b[h]) for h in range(4)], -1)
        torch.testing.assert_close(attention.gate(None, q)[..., 0], expected, rtol=1e-6,
                                   atol=1e-7)
        # RoPE matters: the unrotated query gives another gate beyond position 0.
        assert (attention.gate(None, unrotated) - attention.gate(None, q))[:, 1:].abs().max() > 1e-4


@pytest.mark.parametrize("gate_input", ["hidden", "query"])
def test_gradients_reach_gate_first_loop_kv_and_embedding(gate_input):
    # clp_hidden_scale=0 cuts the shift path, so loop 1 can reach the loss only through its K/V.
    # Then loop 2's input is E(x), loop 1's too: a window shorter than the sequence keeps the two
    # branches apart (with a full window they would be equal and the gate's gradient zero).
    torch.manual_seed(0)
    model = PLTModel(small_model_config(num_loops=2, clp_hidden_scale=0.0, swa_window=4,
                                        gate_input=gate_input).build())
    first_kv = []

    def keep_first_loop_kv(module, args, output):
        if not first_kv:
            for k, v in output[1]:
                k.retain_grad(), v.retain_grad()
            first_kv.extend(output[1])

    model.decoder.register_forward_hook(keep_first_loop_kv)
    tokens = _tokens()
    model(tokens, labels=tokens).mean().backward()
    gate = model.decoder.layers[0].self_attention.linear_gate
    assert gate.weight.grad.abs().sum() > 0 and gate.bias.grad.abs().sum() > 0
    assert all(k.grad.abs().sum() > 0 and v.grad.abs().sum() > 0 for k, v in first_kv)
    assert model.embedding.word_embeddings.weight.grad.abs().sum() > 0


def _gpt_twin(model):
    """megatron-core's own GPTModel of the same shape, holding ``model``'s weights."""
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    cfg = model.config
    gpt = GPTModel(cfg, get_gpt_layer_local_spec(normalization="RMSNorm"),
                   vocab_size=cfg.vocab_size, max_sequence_length=cfg.max_position_embeddings,
                   share_embeddings_and_output_weights=False, position_embedding_type="rope",
                   rotary_base=cfg.rotary_base)
    missing, unexpected = gpt.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all(k.endswith("_extra_state") for k in missing), (missing,
                                                                                 unexpected)
    return gpt.eval()


def test_one_loop_equals_megatron_gpt_model():
    model = build_small(num_loops=1)
    gpt = _gpt_twin(model)
    tokens = _tokens()
    positions = torch.arange(SEQ).expand(2, SEQ)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), gpt(tokens, positions, None), rtol=0, atol=1e-5)


def test_vanilla_looped_equals_plain_block_twice_with_shift():
    model = build_small(num_loops=2, shared_kv=False)
    gpt = _gpt_twin(model)  # the plain block: megatron's TransformerBlock with these weights
    final_norm = gpt.decoder.final_layernorm
    gpt.decoder.final_layernorm = None  # run the bare block; apply the norm by hand below
    tokens = _tokens()
    with torch.no_grad():
        emb = gpt.embedding(tokens, None)
        rotary = gpt.rotary_pos_emb(SEQ)
        h1 = gpt.decoder(emb, None, rotary_pos_emb=rotary)
        loop2_input = emb + shift_one_position(final_norm(h1), sequence_parallel=False)
        h2 = gpt.decoder(loop2_input, None, rotary_pos_emb=rotary)
        reference, _ = gpt.output_layer(final_norm(h2))
        torch.testing.assert_close(model(tokens), reference.transpose(0, 1), rtol=0, atol=1e-5)


def _preset(name: str, **overrides) -> ModelConfig:
    schema = OmegaConf.structured(ModelConfig)
    return OmegaConf.to_object(OmegaConf.merge(schema, OmegaConf.load(f"conf/model/{name}.yaml"),
                                               overrides))


@pytest.mark.parametrize("num_loops", [1, 2, 3, 4])
def test_7b_preset_has_about_7_6b_parameters_for_every_loop_count(num_loops):
    config = _preset("plt_7b", num_loops=num_loops).build(params_dtype=torch.bfloat16,
                                                          perform_initialization=False)
    with torch.device("meta"):
        model = PLTModel(config)
    count = sum(p.numel() for p in model.parameters())
    assert 7.5e9 <= count <= 7.7e9, count


def test_tiny_preset_is_small():
    count = sum(p.numel() for p in PLTModel(_preset("plt_tiny").build()).parameters())
    assert 1e6 <= count <= 5e6, count


@pytest.mark.parametrize("overrides, field", [
    (dict(hidden_size=100, num_attention_heads=3), "model.num_attention_heads"),
    (dict(swa_window=0), "model.swa_window"),
    (dict(num_loops=0), "model.num_loops"),
    (dict(num_query_groups=3), "model.num_query_groups"),
    (dict(attention_backend="cudnn"), "model.attention_backend"),
])
def test_config_errors_name_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        small_model_config(**overrides).build()


def test_tensor_parallel_not_dividing_heads_is_refused():
    with pytest.raises(ConfigError, match=r"parallel\.tp=3"):
        small_model_config().build(tensor_parallel=3)


def test_attention_mask_is_refused():
    model = build_small(num_loops=1)
    with pytest.raises(ValueError, match="causal-only"):
        model(_tokens(), attention_mask=torch.ones(1, 1, SEQ, SEQ, dtype=torch.bool))


def test_loss_is_next_token_cross_entropy_of_the_last_loop():
    model = build_small(num_loops=3)
    tokens, labels = _tokens(), _tokens(seed=2)
    with torch.no_grad():
        logits = model(tokens)
        loss = model(tokens, labels=labels)
    expected = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none")
    torch.testing.assert_close(loss, expected.view_as(loss), rtol=1e-5, atol=1e-5)
