"""Round trips through the published layout are bitwise.

- ours -> HF -> ours: checkpoints the trainer wrote (3 steps) (megatron at TP1, TP2, PP2; DeepSpeed ZeRO-2),
  exported in fp32 and read back with read_hf, equal pretrain.checkpoint.read_weights of the
  source tensor for tensor (torch.equal).
- HF -> ours -> HF: a directory of each published family saved by transformers from random
  weights (gates and norms not at their initial values), imported with scripts/import_hf and
  exported again in its dtype: every tensor equal (bf16 and fp32 sources).
- Continued training starts where the source stood: the imported model's loss on a batch equals
  the source model's (and, once the trainer reads `checkpoint.init_from`, its step-1 loss).
"""

import importlib.util
import json
import shutil

import pytest
import torch

from tests.fixtures import (SMALL, output_of, read_metrics, run_torchrun, run_trainer,
                            small_data, small_prepared)
from tests.fixtures import assert_bitwise_equal, hf_tensors, model_and_config

pytestmark = pytest.mark.usefixtures("megatron_world")
transformers = pytest.importorskip("transformers")

RUN = SMALL + small_data() + ["train.max_steps=3", "checkpoint.interval=3"]


def _export_and_compare(run_dir, tmp_path):
    from handoff import read_hf
    from handoff.export import export_checkpoint
    from pretrain.checkpoint import read_weights, resolve_checkpoint

    source = resolve_checkpoint(str(run_dir / "checkpoints"))
    model_cfg, expected, _ = read_weights(source)
    hf_dir = export_checkpoint(source, str(tmp_path / "hf"), dtype="fp32", max_shard_size="1MB")
    back_cfg, weights = read_hf(hf_dir)
    assert (back_cfg.num_loops, back_cfg.swa_window, back_cfg.gate_input) == (
        model_cfg.num_loops, model_cfg.swa_window, model_cfg.gate_input)
    assert_bitwise_equal(weights, expected)
    return hf_dir


def test_megatron_tp1_source(tmp_path):
    result = run_trainer(tmp_path / "run", *RUN, "model.gate_input=query")
    assert result.returncode == 0, output_of(result)
    _export_and_compare(tmp_path / "run", tmp_path)


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("layout", ["parallel.tp=2", "parallel.pp=2"])
def test_megatron_tp2_and_pp2_sources(tmp_path, layout):
    result = run_torchrun(tmp_path / "run", 2, *RUN, layout)
    assert result.returncode == 0, output_of(result)
    _export_and_compare(tmp_path / "run", tmp_path)


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                    reason="deepspeed is not installed (pip install 'loopcoder[deepspeed]')")
def test_deepspeed_zero2_source(tmp_path):
    result = run_torchrun(tmp_path / "run", 2, *RUN, "engine=deepspeed", "deepspeed.zero_stage=2")
    assert result.returncode == 0, output_of(result)
    _export_and_compare(tmp_path / "run", tmp_path)


def _published_dir(tmp_path, family_overrides, dtype):
    """A transformers-saved directory of one family with random weights."""
    from handoff.export import export_config_only

    _, cfg = model_and_config(**family_overrides)
    code = export_config_only(cfg, str(tmp_path / "code"))
    config = transformers.AutoConfig.from_pretrained(code, trust_remote_code=True)
    model = transformers.AutoModelForCausalLM.from_config(config, trust_remote_code=True)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(7)
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1 + (
                1.0 if param.dim() == 1 and "bias" not in str(param.shape) else 0.0))
    model.to(dtype).save_pretrained(tmp_path / "published")
    for name in ("config.json",) + tuple(p.name for p in (tmp_path / "code").glob("*.py")):
        shutil.copy(tmp_path / "code" / name, tmp_path / "published" / name)
    shutil.copy(small_prepared().tokenizer_model, tmp_path / "published" / "tokenizer.model")
    return tmp_path / "published"


@pytest.mark.parametrize("family_overrides, dtype", [
    pytest.param(dict(num_loops=2), torch.bfloat16, id="loopcoder-v2-bf16"),
    pytest.param(dict(num_loops=3, gate_input="query"), torch.float32, id="loopcoder-v2-query-fp32"),
    pytest.param(dict(num_loops=2, clp=False, gate_input="query"), torch.bfloat16,
                 id="iquest-loop-bf16"),
])
def test_published_family_imports_and_exports_bitwise(tmp_path, family_overrides, dtype):
    from handoff.export import export_checkpoint
    from scripts import import_hf

    published = _published_dir(tmp_path, family_overrides, dtype)
    original = hf_tensors(published)
    assert original and all(t.dtype == dtype for t in original.values())
    assert import_hf.main(["--hf", str(published), "--out", str(tmp_path / "ours")]) == 0
    name = "bf16" if dtype == torch.bfloat16 else "fp32"
    again = export_checkpoint(str(tmp_path / "ours"), str(tmp_path / "again"), dtype=name)
    assert_bitwise_equal(hf_tensors(again), original)
    model_type = json.loads((published / "config.json").read_text())["model_type"]
    assert json.loads((tmp_path / "again" / "config.json").read_text())["model_type"] == model_type


def test_imported_model_has_the_source_loss(tmp_path):
    """Exported then imported: the model continued training starts from computes what the
    source computed (its loss on a batch, bitwise)."""
    from handoff.import_hf import import_hf
    from pretrain.checkpoint import load_model
    from tests.fixtures import exported

    model, cfg = model_and_config(num_loops=2)
    hf_dir = exported(model, cfg, tmp_path)
    imported, _, step = load_model(import_hf(hf_dir, str(tmp_path / "imported")))
    tokens = torch.randint(0, cfg.vocab_size, (2, 33), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = model(tokens[:, :-1], labels=tokens[:, 1:]).mean()
        got = imported(tokens[:, :-1], labels=tokens[:, 1:]).mean()
    assert step == 0 and torch.equal(got, expected)


def _trainer_reads_init_from() -> bool:
    from pretrain.config import CheckpointConfig

    return "init_from" in CheckpointConfig.__dataclass_fields__


@pytest.mark.skipif(not _trainer_reads_init_from(),
                    reason="checkpoint.init_from is wired into the trainer by the lead (issue 15)")
def test_init_from_an_export_continues_with_the_source_loss(tmp_path):
    """Train 3 steps, export, then `checkpoint.init_from=HF_DIR`: step 1 of the new run has the
    loss of step 1 of a run started from the source checkpoint the same way."""
    from handoff.export import export_checkpoint

    result = run_trainer(tmp_path / "source", *RUN)
    assert result.returncode == 0, output_of(result)
    checkpoints = tmp_path / "source" / "checkpoints"
    hf_dir = export_checkpoint(str(checkpoints), str(tmp_path / "hf"), dtype="fp32")
    losses = {}
    for name, init in (("from_ours", checkpoints), ("from_hf", hf_dir)):
        result = run_trainer(tmp_path / name, *RUN, f"checkpoint.init_from={init}")
        assert result.returncode == 0, output_of(result)
        losses[name] = read_metrics(tmp_path / name)[0]["loss"]
    assert losses["from_hf"] == losses["from_ours"]
