"""Our transformers implementation (handoff/hf_files/, loaded from an exported directory with
trust_remote_code) computes what this framework computes.

Logits: fp32 on the CPU, checked at 1e-5 relative to the largest logit (the issue's tolerance; the
two run the same float32 operations in the same order and agree bitwise in practice). Greedy
tokens: `model.generate()` with its PLT cache (loop-1 K/V for the whole sequence, a window per later
loop) against model/generation.py's cached decoding, which scripts/generate.py runs: equal, token for
token, over prompts longer than the local window (swa_window=4), so the rings wrap.
"""

import pytest
import torch

from tests.fixtures import HANDOFF_VOCAB, exported, model_and_config

pytestmark = pytest.mark.usefixtures("megatron_world")
transformers = pytest.importorskip("transformers")

CASES = [  # (num_loops, clp, shared_kv, gate_input): R=1..4, clp and shared_kv on/off, both gates
    pytest.param(1, True, True, "hidden", id="R1"),  # a Llama: transformers' own class
    pytest.param(2, True, True, "hidden", id="R2-loopcoder-v2"),
    pytest.param(3, True, True, "query", id="R3-query-gate"),
    pytest.param(4, True, True, "hidden", id="R4"),
    pytest.param(2, False, True, "query", id="R2-iquest-loop"),
    pytest.param(2, False, True, "hidden", id="R2-clp-off-hidden-gate"),
    pytest.param(3, True, False, "hidden", id="R3-shared-kv-off"),
]


def load_hf(hf_dir):
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, trust_remote_code=True,
                                                              dtype=torch.float32)
    return model.eval()


def _ids(shape, seed=0):
    return torch.randint(0, HANDOFF_VOCAB, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("num_loops, clp, shared_kv, gate_input", CASES)
def test_logits_and_greedy_tokens_equal_ours(tmp_path, num_loops, clp, shared_kv, gate_input):
    from model.generation import generate

    ours, cfg = model_and_config(num_loops=num_loops, clp=clp, shared_kv=shared_kv,
                                 gate_input=gate_input)
    # clp=false with the hidden gate: vLLM/SGLang would serve it differently (test_handoff_serving)
    hf = load_hf(exported(ours, cfg, tmp_path,
                          allow_served_differently=not clp and gate_input == "hidden"))
    tokens = _ids((2, 24))
    with torch.no_grad():
        expected, got = ours(tokens), hf(tokens, use_cache=False).logits
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()

    prompt = tokens[:1, :9]
    with torch.no_grad():
        reference = generate(ours, [prompt[0]], max_new_tokens=14)[0]
        tokens_hf = hf.generate(prompt, max_new_tokens=14, do_sample=False, eos_token_id=None,
                                pad_token_id=0)[0]
    assert tokens_hf.tolist() == reference.tolist()


def test_left_padded_batch_generates_each_row_as_alone(tmp_path):
    """generate() on a batch of prompts of different lengths (left padding, as lm-eval sends
    them) gives every row the tokens it gets alone."""
    ours, cfg = model_and_config(num_loops=2)
    hf = load_hf(exported(ours, cfg, tmp_path))
    short, long = _ids((5,), seed=1), _ids((11,), seed=2)
    batch = torch.zeros(2, 11, dtype=torch.long)
    batch[0, 6:], batch[1] = short, long
    mask = (torch.arange(11) >= torch.tensor([[6], [0]])).long()
    with torch.no_grad():
        together = hf.generate(batch, attention_mask=mask, max_new_tokens=8, do_sample=False,
                               eos_token_id=None, pad_token_id=0)
        alone = [hf.generate(p[None], max_new_tokens=8, do_sample=False, eos_token_id=None,
                             pad_token_id=0)[0, len(p):] for p in (short, long)]
    assert together[0, 11:].tolist() == alone[0].tolist()
    assert together[1, 11:].tolist() == alone[1].tolist()


def test_generate_script_and_transformers_write_the_same_text(tmp_path):
    """scripts/generate.py on the checkpoint and AutoTokenizer + generate() on its export."""
    from data.tokenizer import CodeTokenizer
    from scripts import generate as generate_script
    from tests.fixtures import small_prepared

    ours, cfg = model_and_config(num_loops=2)
    hf_dir = exported(ours, cfg, tmp_path)
    prompt = "def add(a, b):\n"
    text = generate_script.main(["--checkpoint", str(tmp_path / "checkpoint"), "--prompt",
                                 prompt.replace("\n", "\\n"), "--max-new-tokens", "12"])[0]
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = load_hf(hf_dir).generate(ids, max_new_tokens=12, do_sample=False)
    new = [t for t in out[0, ids.shape[1]:].tolist() if t != tokenizer.eos_token_id]
    # Decoded by the script's own tokenizer: a random model emits byte pieces that are not UTF-8,
    # which sentencepiece and tokenizers' ByteFallback replace differently (real text decodes the
    # same: test_handoff_tokenizer.py); the tokens are what must agree.
    assert CodeTokenizer(small_prepared().tokenizer_model).decode(ids[0].tolist() + new) == text


def test_the_7b_config_builds_on_the_meta_device(tmp_path):
    """`--config-only model=plt_7b` (no weights) gives a directory transformers builds the 7B
    from: 7.5-7.7B parameters, none allocated."""
    from scripts import export_hf

    assert export_hf.main(["--config-only", "model=plt_7b", "--out", str(tmp_path / "7b")]) == 0
    config = transformers.AutoConfig.from_pretrained(tmp_path / "7b", trust_remote_code=True)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config, trust_remote_code=True)
    assert 7.5e9 <= sum(p.numel() for p in model.parameters()) <= 7.7e9
