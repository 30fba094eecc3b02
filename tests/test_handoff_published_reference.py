"""Our exports compute what the published loaders compute: tests/published_reference.py, a float64
numpy forward written from docs/spec.md alone (not from our model or handoff/hf_files), over each
export's safetensors + config.json, against our model in float64 and the export's transformers
code in float64, at 1e-10 of the largest logit. Sequences longer than the local window, so the
window's edge, the CLP shift, the shared K/V and the gates all reach the logits.
"""

import numpy as np
import pytest
import torch

from tests.fixtures import HANDOFF_VOCAB, exported, model_and_config
from tests.published_reference import reference_logits

pytestmark = pytest.mark.usefixtures("megatron_world")
transformers = pytest.importorskip("transformers")
TOLERANCE = 1e-10

CASES = {  # every configuration the published loaders serve: both families, both PLT gates
    "R2-loopcoder-v2": dict(num_loops=2),
    "R3-query-gate": dict(num_loops=3, gate_input="query", swa_window=5),
    "R2-no-per-loop-norm-tied": dict(num_loops=2, normalize_per_loop=False,
                                     untie_embeddings_and_output_weights=False),
    "R2-iquest-loop": dict(num_loops=2, clp=False, gate_input="query"),
    "R3-iquest-loop": dict(num_loops=3, clp=False, gate_input="query", swa_window=6),
    "R1-llama": dict(num_loops=1, rotary_base=5e5),
}


def _tokens():
    return torch.randint(0, HANDOFF_VOCAB, (1, 24), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("overrides", CASES.values(), ids=CASES.keys())
def test_export_matches_the_published_math_in_float64(tmp_path, overrides):
    ours, cfg = model_and_config(**overrides)
    hf_dir = exported(ours, cfg, tmp_path)
    tokens = _tokens()
    expected = torch.from_numpy(reference_logits(hf_dir, tokens[0].numpy()))
    scale = expected.abs().max()
    with torch.no_grad():
        got = ours.double()(tokens)[0]
    assert (got - expected).abs().max() <= TOLERANCE * scale
    if cfg.num_loops > 1:  # (transformers' own Llama keeps float32 norms: test_handoff_llama)
        hf = transformers.AutoModelForCausalLM.from_pretrained(
            hf_dir, trust_remote_code=True, dtype=torch.float64).eval()
        with torch.no_grad():
            got = hf(tokens, use_cache=False).logits[0]
        assert (got - expected).abs().max() <= TOLERANCE * scale


def test_the_reference_tells_apart_what_the_loaders_would_serve_differently(tmp_path):
    """clp=false with the hidden gate (exported only with --allow-served-differently): the
    published math runs the shift it never had, so the reference and our model disagree; the
    check above could fail."""
    ours, cfg = model_and_config(num_loops=2, clp=False, gate_input="hidden")
    hf_dir = exported(ours, cfg, tmp_path, allow_served_differently=True)
    tokens = _tokens()
    expected = reference_logits(hf_dir, tokens[0].numpy())
    with torch.no_grad():
        got = ours.double()(tokens)[0].numpy()
    assert np.abs(got - expected).max() > 1e-3 * np.abs(expected).max()
