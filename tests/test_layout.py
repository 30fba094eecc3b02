"""The parallel layout (pretrain/layout.py), derived once from the config and the world size, and
the rules between config nodes that follow the features in use (pretrain/config_rules.py)."""

import dataclasses

import pytest
from omegaconf import OmegaConf

from data.errors import DataConfigError
from planning.memory import layout_of
from pretrain.config import ConfigError, compose, validate
from pretrain.layout import ParallelLayout, settle_micro_batch
from tests.fixtures import SMALL, output_of, run_trainer, small_prepared


def composed(*overrides):
    return OmegaConf.to_object(compose(["run_dir=/tmp/unused", *overrides]))


@pytest.mark.parametrize("pp, loops, vpp", [(1, 3, None), (2, 1, None), (2, 2, 2), (4, 3, 3)])
def test_the_loops_are_the_virtual_chunks_only_with_pipeline_stages(pp, loops, vpp):
    cfg = composed(f"parallel.pp={pp}", f"model.num_loops={loops}", "model.num_layers=4",
                   "train.global_batch_size=8")
    assert ParallelLayout.from_config(cfg, world_size=pp).vpp == vpp


@pytest.mark.parametrize("world, tp, pp, dp", [(1, 1, 1, 1), (8, 2, 2, 2), (8, 1, 1, 8), (6, 3, 1, 2)])
def test_the_data_parallel_size_is_what_tp_and_pp_leave(world, tp, pp, dp):
    cfg = composed(f"parallel.tp={tp}", f"parallel.pp={pp}", "model.num_loops=1",
                   "model.num_attention_heads=6", "model.num_query_groups=3",
                   "model.hidden_size=192", "train.global_batch_size=24")
    layout = ParallelLayout.from_config(cfg, world)
    assert (layout.world_size, layout.tp, layout.pp, layout.dp) == (world, tp, pp, dp)


@pytest.mark.parametrize("overrides, world, micro, count", [
    (["train.global_batch_size=8"], 4, 2, 1),                       # the whole share of a rank
    (["train.global_batch_size=8", "train.micro_batch_size=1"], 2, 1, 4),  # the rest accumulates
    # pp=2 with two loops (interleaved): the share of 4 splits into pp micro-batches of 2
    (["train.global_batch_size=8", "parallel.pp=2", "model.num_loops=2"], 4, 2, 2),
    # pp=2 with one loop (plain 1F1B): no grouping, the whole share
    (["train.global_batch_size=8", "parallel.pp=2", "model.num_loops=1"], 4, 4, 1),
])
def test_the_micro_batches_per_step(overrides, world, micro, count):
    cfg = composed(*overrides)
    layout = ParallelLayout.from_config(cfg, world)
    assert (layout.micro_batch_size, layout.num_micro_batches) == (micro, count)
    assert layout.micro_batch_size * layout.num_micro_batches * layout.dp == 8


def test_only_settling_writes_the_micro_batch():
    cfg = composed("train.global_batch_size=8", "train.micro_batch_size=null")
    assert ParallelLayout.from_config(cfg, 2).micro_batch_size == 4
    assert cfg.train.micro_batch_size is None
    layout = settle_micro_batch(cfg, 2)
    assert cfg.train.micro_batch_size == layout.micro_batch_size == 4
    assert validate(composed("train.global_batch_size=8", "train.micro_batch_size=null"), 2) == layout


@pytest.mark.parametrize("overrides, world, message", [
    (["parallel.tp=2"], 3, "world size 3 is not divisible by parallel.tp"),
    (["parallel.tp=2", "parallel.pp=2", "model.num_loops=1"], 6, "world size 6 is not divisible"),
    (["train.global_batch_size=6", "train.micro_batch_size=null"], 4,
     "train.global_batch_size=6 is not divisible by the data-parallel size 4"),
    (["train.global_batch_size=6", "train.micro_batch_size=4"], 1,
     "train.global_batch_size=6 is not divisible by train.micro_batch_size"),
    # three micro-batches cannot run in groups of pp=2 (the loops as virtual chunks)
    (["train.global_batch_size=6", "train.micro_batch_size=2", "parallel.pp=2",
      "model.num_loops=2"], 2, "3 micro-batch\\(es\\) per step"),
])
def test_a_world_or_batch_the_layout_cannot_split_is_refused_by_name(overrides, world, message):
    with pytest.raises(ConfigError, match=message):
        ParallelLayout.from_config(composed(*overrides), world)


def test_the_layout_is_immutable_and_says_where_the_whole_model_is():
    one = ParallelLayout.from_config(composed("train.global_batch_size=8"), 2)
    staged = ParallelLayout.from_config(composed("train.global_batch_size=8", "parallel.pp=2",
                                                 "model.num_loops=2"), 4)
    assert one.whole_model_on_each_rank and not staged.whole_model_on_each_rank
    with pytest.raises(dataclasses.FrozenInstanceError):
        one.pp = 2
    assert staged.describe() == "tp=1 pp=2 vpp=2 dp=2, 2 micro-batch(es) of 2 per rank per step"


def test_the_planner_prices_the_trainers_layout():
    """No fallback of its own: the micro batch the trainer would settle, its vpp, its dp."""
    cfg = composed("train.global_batch_size=16", "train.micro_batch_size=null", "parallel.pp=2",
                   "model.num_loops=2")
    priced = layout_of(cfg, world_size=8)
    trained = validate(cfg, 8)
    assert (priced.micro_batch_size, priced.vpp, priced.dp, priced.num_micro_batches) == (
        trained.micro_batch_size, trained.vpp, trained.dp, trained.num_micro_batches) == (2, 2, 4, 2)


# -- data.valid_blend follows what reads the held-out batch -----------------------------------------
BLEND = ["data.blend=[[1.0,data/train]]", "data.tokenizer_model=tok.model"]


@pytest.mark.parametrize("overrides, world", [
    (["eval.interval=0", "diagnostics.interval=0"], 1),                 # nothing reads it
    (["eval.interval=0", "diagnostics.interval=5", "parallel.pp=2"], 2),  # diagnostics are off
])
def test_no_validation_blend_is_demanded_when_nothing_reads_the_held_out_batch(overrides, world):
    validate(composed(*BLEND, *overrides), world)


@pytest.mark.parametrize("overrides", [["eval.interval=10", "diagnostics.interval=0"],
                                       ["eval.interval=0", "diagnostics.interval=10"]])
def test_a_validation_blend_is_demanded_when_something_reads_the_held_out_batch(overrides):
    with pytest.raises(DataConfigError, match="data.valid_blend is empty"):
        validate(composed(*BLEND, *overrides), 1)


def test_a_run_without_a_validation_blend_trains_when_nothing_reads_it(tmp_path):
    prepared = small_prepared()
    result = run_trainer(tmp_path, *SMALL, f"data.blend=[[1.0,{prepared.train_blend[0][1]}]]",
                         f"data.tokenizer_model={prepared.tokenizer_model}", "train.seq_length=32",
                         "train.max_steps=3", "diagnostics.interval=0", "checkpoint.interval=0",
                         "checkpoint.save_final=false")
    assert result.returncode == 0, output_of(result)
    # The start log's world line names the layout the run was split by.
    assert "(world 1: tp=1 pp=1 vpp=1 dp=1, 2 micro-batch(es) of 2 per rank per step" in (
        output_of(result))
