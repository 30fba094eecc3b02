"""config.json <-> ModelConfig for both published families (docs/spec.md#published-formats).

The 7B preset is the published LoopCoder-V2: `export_hf --config-only model=plt_7b` writes every
value the published config.json states (the values below are docs/spec.md#loopcoder-v2's list of that file). The
window conventions are checked on both sides of the boundary by what the local branch sees.
"""

import json

import pytest
import torch

from handoff.published_config import (PublishedFormatError, model_config_from_published,
                                      published_config)
from tests.fixtures import small_model_config

pytestmark = pytest.mark.usefixtures("megatron_world")

PUBLISHED_LOOPCODER_V2 = {
    "architectures": ["IQuestPLTCoderForCausalLM"], "model_type": "iquestpltcoder",
    "hidden_size": 5120, "intermediate_size": 27648, "num_hidden_layers": 14,
    "num_attention_heads": 40, "num_key_value_heads": 8, "head_dim": 128, "hidden_act": "silu",
    "rms_norm_eps": 1e-05, "rope_theta": 500000, "rope_scaling": None,
    "max_position_embeddings": 131072, "vocab_size": 76800, "tie_word_embeddings": False,
    "attention_bias": False, "mlp_bias": False, "bos_token_id": 1, "eos_token_id": 2,
    "dtype": "bfloat16", "plt_num_loops": 2, "plt_emb_scale": 0.707, "plt_hidden_scale": 0.053,
    "plt_normalize_per_loop": True, "plt_gate_use_hidden_states": True, "plt_window_size": [64, 0],
}


def test_plt_7b_config_only_equals_the_published_config(tmp_path):
    from scripts import export_hf

    assert export_hf.main(["--config-only", "model=plt_7b", "--out", str(tmp_path / "hf")]) == 0
    written = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert {key: written[key] for key in PUBLISHED_LOOPCODER_V2} == PUBLISHED_LOOPCODER_V2
    assert not list((tmp_path / "hf").glob("*.safetensors"))  # no weights
    auto_map = written["auto_map"]
    for reference in auto_map.values():
        assert (tmp_path / "hf" / (reference.split(".")[0] + ".py")).is_file()


def test_published_config_reads_back_as_the_same_model():
    for overrides in (dict(), dict(gate_input="query", num_loops=3),
                      dict(clp=False, gate_input="query"), dict(clp=False),
                      dict(shared_kv=False), dict(num_loops=1)):
        ours = small_model_config(clp_emb_scale=0.7, clp_hidden_scale=0.3, **overrides)
        back = model_config_from_published(json.loads(json.dumps(published_config(ours))))
        for key in ("num_loops", "clp", "shared_kv", "gate_input", "swa_window", "num_layers",
                    "num_query_groups", "clp_emb_scale", "clp_hidden_scale", "rotary_base",
                    "norm_epsilon", "untie_embeddings_and_output_weights"):
            unused = (key.startswith("clp_") and not ours.clp) or (  # unused without the shift
                ours.num_loops == 1 and key in ("clp", "clp_emb_scale", "clp_hidden_scale",
                                                "shared_kv", "gate_input", "swa_window"))
            if not unused:  # (an R=1 model is a Llama: no loop settings at all)
                assert getattr(back, key) == getattr(ours, key), (overrides, key)


def _local_branch_reach(model_cfg, seq=40, j=10):
    """Positions of loop 2 whose attention output moves when loop 2's input at j moves (loop 1's
    K/V fixed): j up to j + (keys back), i.e. how many keys the local branch sees."""
    from model import PLTModel

    torch.manual_seed(0)
    model = PLTModel(model_cfg.build()).eval()
    attention = model.decoder.layers[0].self_attention
    rotary, hidden = model.rotary_pos_emb(seq), torch.randn(seq, 1, model_cfg.hidden_size)
    with torch.no_grad():
        _, _, first_kv = attention(torch.randn_like(hidden), None, rotary, loop_index=0)
        bumped = hidden.clone()
        bumped[j] += 1.0
        outputs = [attention(h, h, rotary, loop_index=1, first_loop_kv=first_kv)[0]
                   for h in (hidden, bumped)]
    moved = ((outputs[1] - outputs[0]).abs().amax(dim=(1, 2)) > 1e-7).nonzero().flatten()
    return moved.tolist()


SHAPE = {"model_type": None, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
         "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128}


@pytest.mark.parametrize("keys_seen", [4, 5])
def test_iquest_loop_window_counts_the_query(keys_seen):
    """loop_window_size = keys seen INCLUDING the query: W keys, not W + 1 (swa_window = W - 1)."""
    cfg = model_config_from_published(dict(SHAPE, model_type="iquestloopcoder", loop_num=2,
                                           loop_window_size=keys_seen))
    assert cfg.swa_window == keys_seen - 1
    assert _local_branch_reach(cfg) == list(range(10, 10 + keys_seen))
    assert published_config(cfg)["loop_window_size"] == keys_seen


@pytest.mark.parametrize("left", [4, 5])
def test_loopcoder_v2_window_is_keys_back_plus_the_query(left):
    """plt_window_size [left, 0]: left keys back plus the query, left + 1 keys (swa_window = left)."""
    cfg = model_config_from_published(dict(SHAPE, model_type="iquestpltcoder",
                                           plt_window_size=[left, 0]))
    assert cfg.swa_window == left
    assert _local_branch_reach(cfg) == list(range(10, 10 + left + 1))


@pytest.mark.parametrize("change, named", [
    (dict(model_type="mistral"), "model_type='mistral'"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "rope_scaling"),
    (dict(head_dim=32), "head_dim=32"),
    (dict(mlp_bias=True), "mlp_bias=True"),
    (dict(plt_window_size=[64, 8]), "plt_window_size"),
])
def test_configs_our_model_cannot_be_are_refused_naming_the_file_and_key(change, named):
    config = {**SHAPE, "model_type": "iquestpltcoder", **change}
    with pytest.raises(PublishedFormatError) as error:
        model_config_from_published(config, "/some/dir/config.json")
    assert "/some/dir/config.json" in str(error.value) and named in str(error.value)
