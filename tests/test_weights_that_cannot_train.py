"""Weights with NaN or inf never leave or enter a run unnoticed: `scripts.export_hf` refuses such a
checkpoint before it writes anything, and `checkpoint.init_from` refuses our own checkpoint holding
them (the HF side is tests/test_handoff_damaged_inputs.py), each naming the tensor, exit 4."""

import math

import pytest
import torch

from pretrain.errors import EXIT_CHECKPOINT, run_tool
from tests.fixtures import (SMALL, model_and_config, output_of, run_trainer, small_data,
                            write_checkpoint)

pytestmark = pytest.mark.usefixtures("megatron_world")
POISONED = "decoder.layers.1.mlp.linear_fc2.weight"


def _poisoned(model, value):
    with torch.no_grad():
        dict(model.named_parameters())[POISONED].view(-1)[3] = value
    return model


@pytest.mark.parametrize("value", [math.nan, -math.inf])
def test_export_refuses_non_finite_weights_before_writing(value, tmp_path, capsys):
    from scripts import export_hf

    model, cfg = model_and_config(num_loops=2)
    folder = write_checkpoint(_poisoned(model, value), cfg, str(tmp_path / "checkpoint"))
    out = tmp_path / "hf"
    capsys.readouterr()
    assert run_tool(export_hf.main, ["--checkpoint", str(tmp_path / "checkpoint"),
                                     "--out", str(out)]) == EXIT_CHECKPOINT
    err = capsys.readouterr().err
    assert POISONED in err and folder in err and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]  # no out, no staging


def test_init_from_refuses_our_checkpoint_with_nan_weights(tmp_path):
    """The trainer's model (SMALL) written with one NaN as a weights-only checkpoint: init_from
    stops with exit 4 naming the tensor, instead of a run that is NaN from step 1."""
    from tests.fixtures import build_small, small_model_config

    fields = dict(vocab_size=640, max_position_embeddings=4096)
    model = _poisoned(build_small(randomize_gate=False, **fields), math.nan)
    write_checkpoint(model, small_model_config(**fields), str(tmp_path / "source"))
    result = run_trainer(tmp_path / "run", *SMALL, *small_data(), "train.max_steps=3",
                         f"checkpoint.init_from={tmp_path / 'source'}")
    output = output_of(result)
    assert result.returncode == EXIT_CHECKPOINT, output
    assert "linear_fc2.weight" in output and "1 NaN" in output, output
    assert "Traceback" not in output, output


def test_init_from_a_damaged_hf_directory_exits_4_and_leaves_no_staging(tmp_path):
    """The trainer's side of the HF checks: a source refused while it is staged (config.json is
    not JSON) stops the run with exit 4 naming the file, and no `.init_from` folder is left."""
    import os

    from pretrain.checkpoint.init import STAGING_DIR

    source = tmp_path / "hf"
    source.mkdir()
    (source / "config.json").write_text("{not json")
    result = run_trainer(tmp_path / "run", *SMALL, *small_data(), "train.max_steps=3",
                         f"checkpoint.init_from={source}")
    output = output_of(result)
    assert result.returncode == EXIT_CHECKPOINT and "config.json" in output, output
    leftovers = [folder for folder, names, _ in os.walk(tmp_path / "run") if STAGING_DIR in names]
    assert leftovers == [], leftovers
