"""model.clp_offset: the neutralized CLP arm of the loop-count ablation (docs/spec.md#ablations).

clp_offset=0 keeps CLP's loop input a * E(x) + b * RMSNorm_final(h_{r-1}) but reads h_{r-1} at the
same position: the same weights compute another function, decodable only sequentially, with no
Hugging Face format. Tolerances as in tests/test_model.py and tests/test_decoding.py.
"""

import pytest
import torch

from model import ConfigError, PLTModel
from model.decoding import LoopDecoder, decode_mode
from model.generation import generate
from tests.fixtures import build_small, small_model_config
from tests.test_decoding import WINDOW, _check_against_full_forward, _greedy_by_full_forward
from tests.test_decoding import _prompts_and_continuations
from tests.test_model import SEQ, _gpt_twin, _tokens

pytestmark = pytest.mark.usefixtures("megatron_world")


def test_neutralized_loop_input_reads_the_same_position():
    model = build_small(num_loops=2, clp_offset=0, clp_emb_scale=0.7, clp_hidden_scale=1.3)
    seq, batch, hidden = 12, 2, 64
    emb, prev = torch.randn(seq, batch, hidden), torch.randn(seq, batch, hidden)
    base = model.loop_input(emb, prev)
    for i in (0, 5, seq - 1):
        bumped = prev.clone()
        bumped[i] += 1.0
        moved = (model.loop_input(emb, bumped) - base).abs().amax(dim=(1, 2))
        assert moved[i] > 0 and moved.count_nonzero() == 1, f"h_{i} reached {moved.nonzero()}"
    # CLP's whole construction otherwise: the scales and the per-loop norm.
    torch.testing.assert_close(base, 0.7 * emb + 1.3 * model.decoder.final_layernorm(prev))


def test_neutralized_model_equals_the_plain_block_twice_without_the_shift():
    """An independent reference: megatron's own GPT block with the same weights, loop 2 fed
    E(x) + RMSNorm_final(h_1) unshifted (shared_kv=false, so loop 2 is the plain block)."""
    model = build_small(num_loops=2, shared_kv=False, clp_offset=0)
    gpt = _gpt_twin(model)
    final_norm = gpt.decoder.final_layernorm
    gpt.decoder.final_layernorm = None
    tokens = _tokens()
    with torch.no_grad():
        emb = gpt.embedding(tokens, None)
        rotary = gpt.rotary_pos_emb(SEQ)
        h1 = gpt.decoder(emb, None, rotary_pos_emb=rotary)
        h2 = gpt.decoder(emb + final_norm(h1), None, rotary_pos_emb=rotary)
        reference, _ = gpt.output_layer(final_norm(h2))
        torch.testing.assert_close(model(tokens), reference.transpose(0, 1), rtol=0, atol=1e-5)


def test_both_arms_share_weights_and_init_but_compute_different_functions():
    clp, neutral = build_small(num_loops=3), build_small(num_loops=3, clp_offset=0)
    clp_state, neutral_state = clp.state_dict(), neutral.state_dict()
    assert clp_state.keys() == neutral_state.keys()
    for key, value in clp_state.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, neutral_state[key]), key
    tokens = _tokens()
    with torch.no_grad():
        assert (clp(tokens) - neutral(tokens)).abs().max() > 1e-3


def test_clp_offset_one_is_the_published_construction_bitwise():
    """The default is 1 and spelling it out changes nothing: bit-identical logits."""
    tokens = _tokens()
    with torch.no_grad():
        assert torch.equal(build_small(num_loops=3)(tokens),
                           build_small(num_loops=3, clp_offset=1)(tokens))


def test_neutralized_model_stays_causal():
    model = build_small(num_loops=3, clp_offset=0, swa_window=4)
    tokens, j = _tokens(), 17
    changed = tokens.clone()
    changed[:, j] = (changed[:, j] + 1) % 128
    with torch.no_grad():
        before, after = model(tokens), model(changed)
    torch.testing.assert_close(after[:, :j], before[:, :j], rtol=0, atol=1e-6)


@pytest.mark.parametrize("num_loops, gate_input", [(2, "hidden"), (3, "hidden"), (3, "query")])
def test_neutralized_sequential_decoding_equals_full_forward(num_loops, gate_input):
    model = build_small(num_loops=num_loops, clp_offset=0, gate_input=gate_input,
                        swa_window=WINDOW)
    _check_against_full_forward(model, "sequential", steps=6)


def test_neutralized_model_refuses_parallel_decoding_and_defaults_to_sequential():
    model = build_small(num_loops=2, clp_offset=0, swa_window=WINDOW)
    with pytest.raises(ValueError, match=r"clp_offset=0.*mode='sequential'"):
        LoopDecoder(model, 1, 16, mode="parallel")
    assert decode_mode(model.config) == "sequential"
    assert decode_mode(build_small(num_loops=1, clp_offset=0).config) == "parallel"
    prompts, _ = _prompts_and_continuations(0)
    for prompt, sequence in zip(prompts, generate(model, prompts, max_new_tokens=4)):
        assert torch.equal(sequence, _greedy_by_full_forward(model, prompt, 4))


@pytest.mark.parametrize("value", [2, -1, True, 0.0])
def test_clp_offset_other_than_zero_or_one_is_refused(value):
    with pytest.raises(ConfigError, match=r"model\.clp_offset=.*0 \(the neutralized"):
        small_model_config(clp_offset=value).build()


def test_the_export_refuses_the_neutralized_arm(tmp_path):
    from handoff.export import export_config_only

    out = tmp_path / "hf"
    with pytest.raises(ConfigError, match=r"model\.clp_offset=0 .*has no Hugging Face format"):
        export_config_only(small_model_config(num_loops=2, clp_offset=0), str(out))
    assert not out.exists()
    # clp=false or one loop: the offset means nothing, the export goes on.
    export_config_only(small_model_config(num_loops=2, clp=False, clp_offset=0,
                                          gate_input="query"), str(out))
    assert (out / "config.json").is_file()


def test_model_built_from_the_config_carries_the_offset():
    assert PLTModel(small_model_config(num_loops=2, clp_offset=0).build()).config.clp_offset == 0


def test_decoding_builds_the_loop_input_through_the_models_public_method():
    """One construction of B_r (PLTModel.loop_input): the decoder neither rebuilds it nor reaches
    into the model's private members (docs/spec.md#decoding)."""
    import inspect
    import re

    import model.decoding

    source = inspect.getsource(model.decoding)
    assert not re.findall(r"model\._\w+", source)
    assert "model.loop_input(" in source and "clp_emb_scale" not in source


def test_a_llama_block_takes_the_offset_as_a_loop_setting():
    """checkpoint.init_from / import_hf of a Llama directory: the run's clp_offset reaches the
    looped model (pretrain/checkpoint/init.py passes every LOOP_FIELDS value of the run)."""
    from handoff.llama_block import LOOP_FIELDS
    from scripts.import_hf import loop_settings

    assert "clp_offset" in LOOP_FIELDS
    assert loop_settings(["model.num_loops=3", "model.clp_offset=0"]) == {"num_loops": 3,
                                                                         "clp_offset": 0}
