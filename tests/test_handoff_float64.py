"""In float64 the exported transformers model computes what our model computes, to float64
precision: no float32 step (RMSNorm, RoPE angles) in either (bf16/fp16 still upcast to float32).

The fp32 export is loaded with dtype=float64 (its float32 values are exact in float64) and compared
with our model cast to float64, at 1e-12 of the largest logit: a float32 norm or angle anywhere
shows up as ~1e-7.
"""

import pytest
import torch

from tests.fixtures import HANDOFF_VOCAB, exported, model_and_config

pytestmark = pytest.mark.usefixtures("megatron_world")
transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("overrides", [dict(num_loops=2), dict(num_loops=3, gate_input="query"),
                                       dict(num_loops=2, clp=False, gate_input="query")],
                         ids=["R2", "R3-query-gate", "R2-iquest-loop"])
def test_float64_export_equals_our_float64_model(tmp_path, overrides):
    ours, cfg = model_and_config(**overrides)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        exported(ours, cfg, tmp_path), trust_remote_code=True, dtype=torch.float64).eval()
    ours = ours.double()
    tokens = torch.randint(0, HANDOFF_VOCAB, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = ours(tokens), hf(tokens, use_cache=False).logits
    assert expected.dtype == got.dtype == torch.float64
    assert (got - expected).abs().max() <= 1e-12 * expected.abs().max()


def test_bf16_norm_and_rope_still_run_in_float32():
    """The other side of the rule: a bf16 model's norm is computed in float32, not in bf16."""
    from model.norm import RMSNorm
    from tests.fixtures import small_model_config

    norm = RMSNorm(small_model_config().build(), 64, eps=1e-5)
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(0)) * 100
    expected = torch.nn.functional.rms_norm(x.bfloat16().float(), (64,), eps=1e-5).bfloat16()
    assert torch.equal(norm(x.bfloat16()), expected)


def test_a_model_cast_back_to_float32_computes_as_before():
    """The float64 RoPE angles do not stay behind when the model returns to float32."""
    ours, _ = model_and_config(num_loops=2)
    tokens = torch.randint(0, HANDOFF_VOCAB, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = ours(tokens)
        ours.double()(tokens)
        after = ours.float()(tokens)
    assert after.dtype == torch.float32 and torch.equal(after, before)
