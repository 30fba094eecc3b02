"""An R=1 model is a plain Llama-style decoder: it exports as the architecture transformers, vLLM
and SGLang ship (LlamaForCausalLM, model_type llama, no remote code), and a Llama imports back as
an R=1 model or as the shared block of a looped one (gates at their initial values).

Logits: fp32, at 1e-5 of the largest logit (transformers' Llama runs its norms and RoPE angles in
float32 whatever the model's dtype, so float64 would not be tighter; the operations differ in
order only: a matmul of the angles, the norm's weight applied after the cast).
"""

import json
import shutil

import pytest
import torch

from tests.fixtures import (HANDOFF_VOCAB, SMALL, assert_bitwise_equal, exported, hf_tensors,
                            model_and_config, output_of, read_metrics, run_trainer, small_data,
                            small_prepared)

pytestmark = pytest.mark.usefixtures("megatron_world")
transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("overrides", [
    dict(),
    dict(untie_embeddings_and_output_weights=False, rotary_base=12345.0, norm_epsilon=1e-6,
         num_query_groups=4),
], ids=["untied", "tied-other-rope-eps-mha"])
def test_r1_exports_as_a_llama_that_transformers_loads_natively(tmp_path, overrides):
    ours, cfg = model_and_config(num_loops=1, **overrides)
    hf_dir = exported(ours, cfg, tmp_path)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    assert "auto_map" not in config and not list((tmp_path / "hf").glob("*.py"))
    assert not any(key.startswith(("plt_", "loop_")) for key in config)
    assert "LlamaForCausalLM" in (tmp_path / "hf" / "README.md").read_text()

    hf = transformers.LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    assert type(transformers.AutoModelForCausalLM.from_pretrained(hf_dir)).__name__ == \
        "LlamaForCausalLM"  # no trust_remote_code anywhere
    tokens = torch.randint(0, HANDOFF_VOCAB, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = ours(tokens), hf(tokens).logits
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()


def _llama_dir(tmp_path, dtype=torch.float32, tie=False, **shape):
    """A directory transformers' own LlamaForCausalLM saved, random weights, norms not at 1."""
    fields = dict(vocab_size=HANDOFF_VOCAB, hidden_size=64, intermediate_size=128,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  rms_norm_eps=1e-5, tie_word_embeddings=tie)
    torch.manual_seed(3)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**fields, **shape}))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1.0 + 0.2 * torch.randn(param.shape))
    model.to(dtype).save_pretrained(tmp_path / "llama")
    shutil.copy(small_prepared().tokenizer_model, tmp_path / "llama" / "tokenizer.model")
    return tmp_path / "llama"


@pytest.mark.parametrize("dtype, tie", [(torch.bfloat16, False), (torch.float32, True)],
                         ids=["bf16-untied", "fp32-tied"])
def test_llama_to_ours_to_llama_is_bitwise(tmp_path, dtype, tie):
    from handoff.export import export_checkpoint
    from pretrain.checkpoint import load_model, resolve_checkpoint
    from scripts import import_hf

    llama = _llama_dir(tmp_path, dtype, tie)
    assert import_hf.main(["--hf", str(llama), "--out", str(tmp_path / "ours")]) == 0
    again = export_checkpoint(str(tmp_path / "ours"), str(tmp_path / "again"),
                              dtype="bf16" if dtype == torch.bfloat16 else "fp32")
    assert_bitwise_equal(hf_tensors(again), hf_tensors(llama))
    assert json.loads((tmp_path / "again" / "config.json").read_text())["model_type"] == "llama"

    imported, cfg, _ = load_model(resolve_checkpoint(str(tmp_path / "ours")))  # computes the Llama
    hf = transformers.LlamaForCausalLM.from_pretrained(llama, dtype=torch.float32).eval()
    tokens = torch.randint(0, HANDOFF_VOCAB, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = hf(tokens).logits, imported(tokens)
    assert cfg.model.num_loops == 1 and (got - expected).abs().max() <= 1e-5 * expected.abs().max()


@pytest.mark.parametrize("gate_input", ["hidden", "query"])
def test_a_llama_imports_as_the_block_of_a_looped_model(tmp_path, gate_input):
    """`import_hf ... model.num_loops=2`: the Llama's tensors as the shared block, each layer's
    gate where a fresh PLT's starts (docs/spec.md#gate: W_g = 0, b_g = 0, g = 0.5; gate_norm = 1), the
    loop settings given and the rest at their defaults."""
    from handoff import read_hf
    from pretrain.checkpoint import load_model, resolve_checkpoint
    from scripts import import_hf

    llama = _llama_dir(tmp_path)
    assert import_hf.main(["--hf", str(llama), "--out", str(tmp_path / "ours"), "model.num_loops=2",
                           f"model.gate_input={gate_input}", "model.swa_window=8"]) == 0
    model, cfg, _ = load_model(resolve_checkpoint(str(tmp_path / "ours")))
    assert (cfg.model.num_loops, cfg.model.gate_input, cfg.model.swa_window) == (2, gate_input, 8)
    weights = model.state_dict()
    _, plain = read_hf(str(llama))
    for name, tensor in plain.items():
        assert torch.equal(weights[name], tensor), name
    gates = {k: v for k, v in weights.items() if "gate" in k and not k.endswith("_extra_state")}
    assert len(gates) == 2 * (3 if gate_input == "hidden" else 2)
    for name, tensor in gates.items():
        assert torch.equal(tensor, torch.ones_like(tensor) if "gate_norm" in name
                           else torch.zeros_like(tensor)), name


@pytest.mark.parametrize("argv, named", [
    (["model.hidden_size=32"], "model.hidden_size=32"),
    (["model.num_loops=0"], "model.num_loops=0"),
])
def test_import_refuses_settings_a_llama_cannot_take(tmp_path, capsys, argv, named):
    from pretrain.errors import run_tool
    from scripts import import_hf

    llama = _llama_dir(tmp_path)
    assert run_tool(import_hf.main, ["--hf", str(llama), "--out", str(tmp_path / "o")] + argv) == 2
    assert named in capsys.readouterr().err and not (tmp_path / "o" / "latest").exists()


def test_loop_settings_for_a_looped_directory_are_refused(tmp_path, capsys):
    from pretrain.errors import run_tool
    from scripts import import_hf

    ours, cfg = model_and_config(num_loops=2)
    hf_dir = exported(ours, cfg, tmp_path)
    code = run_tool(import_hf.main, ["--hf", hf_dir, "--out", str(tmp_path / "o"),
                                     "model.num_loops=3"])
    assert code == 2 and "Llama directory only" in capsys.readouterr().err


def test_init_from_a_llama_starts_an_r2_run(tmp_path):
    """`checkpoint.init_from=LLAMA_DIR` in an R=2 run: the Llama becomes the block, the run's loop
    settings and fresh gates; the run trains."""
    llama = _llama_dir(tmp_path, vocab_size=640)
    result = run_trainer(tmp_path / "run", *SMALL, *small_data(), "train.max_steps=3",
                         "model.num_loops=2", f"checkpoint.init_from={llama}")
    assert result.returncode == 0, output_of(result)
    assert "initialised the weights from" in output_of(result)
    assert read_metrics(tmp_path / "run")[0]["loss"] > 0


@pytest.mark.parametrize("rope", [
    {"rope_scaling": {"rope_type": "llama3", "factor": 8.0}},
    {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}},
], ids=["legacy-rope_scaling", "rope_parameters"])
def test_a_llama_with_scaled_rope_is_refused_naming_the_key(tmp_path, capsys, rope):
    """Our RoPE is Llama's default only: any scaling (either spelling of the key) is refused;
    rope_parameters of the default type (what transformers 5 saves) is read above."""
    from pretrain.errors import run_tool
    from scripts import import_hf

    llama = _llama_dir(tmp_path)
    config = json.loads((llama / "config.json").read_text())
    config.pop("rope_parameters", None)
    (llama / "config.json").write_text(json.dumps({**config, **rope}))
    assert run_tool(import_hf.main, ["--hf", str(llama), "--out", str(tmp_path / "o")]) == 4
    assert next(iter(rope)) in capsys.readouterr().err
    assert not (tmp_path / "o" / "latest").exists()
