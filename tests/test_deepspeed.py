"""engine=deepspeed as a user runs it: `python -m torch.distributed.run --nproc_per_node=2 -m
pretrain.train engine=deepspeed deepspeed.zero_stage=N` on CPU (DeepSpeed's CPU accelerator, torch's
gloo group), against the single-process megatron engine on the same data and config.

Tolerance of the engine comparison: the same fp32 model from the same seeded init, the same AdamW,
param groups, LR schedule and clipping; what differs is where the gradients are summed (two ranks vs
two micro-batches in one process, ZeRO's flat buckets vs megatron's buffer) and so the order of fp32
additions. Measured: losses agree to 2.4e-7 over 6 steps (gradient norms to 5e-7 relative) at
stages 1, 2 and 3; checked at 1e-5 absolute (losses) and 1e-5 relative (gradient norms), far below
the ~0.05 per step the loss moves at this LR. Resume and conversion are checked bit for bit.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.fixtures import (REPO, SMALL, Exploit, output_of, read_metrics, reseal, run_torchrun,
                            run_trainer, small_data, trainer_env)

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                       reason="deepspeed is not installed (optional extra: pip install "
                              "'loopcoder[deepspeed]', i.e. deepspeed==0.19.8)"),
]

STEPS = 6
# checkpoint.keep=0 keeps iter_3 and iter_6: the resume and conversion tests start from them.
RUN = SMALL + small_data() + [f"train.max_steps={STEPS}", "train.decay_steps=10",
                              "checkpoint.interval=3", "checkpoint.keep=0"]
LOSS_ATOL = 1e-5
GRAD_NORM_RTOL = 1e-5


def run_deepspeed(run_dir, stage, *overrides, nproc=2, timeout=600):
    return run_torchrun(run_dir, nproc, "engine=deepspeed", f"deepspeed.zero_stage={stage}", *RUN,
                        *overrides, timeout=timeout)


def rows_by_step(run_dir):
    return {row["step"]: row for row in read_metrics(run_dir)}


@pytest.fixture(scope="module")
def megatron_run(tmp_path_factory):
    """One process, megatron engine: the reference (and the run that builds the data cache)."""
    run_dir = tmp_path_factory.mktemp("megatron")
    result = run_trainer(run_dir, *RUN)
    assert result.returncode == 0, output_of(result)
    return run_dir


@pytest.fixture(scope="module")
def zero3_run(tmp_path_factory, megatron_run):
    """2 processes, ZeRO-3: parameters, gradients and optimizer state partitioned."""
    run_dir = tmp_path_factory.mktemp("zero3")
    result = run_deepspeed(run_dir, 3)
    assert result.returncode == 0, output_of(result)
    return run_dir


def assert_same_training(run_dir, reference_dir):
    rows, reference = rows_by_step(run_dir), rows_by_step(reference_dir)
    assert sorted(rows) == list(range(1, STEPS + 1))
    for step, ref in reference.items():
        row = rows[step]
        assert row["consumed_samples"] == ref["consumed_samples"]
        assert row["lr"] == ref["lr"], step
        assert abs(row["loss"] - ref["loss"]) < LOSS_ATOL, (step, row["loss"], ref["loss"])
        assert abs(row["grad_norm"] - ref["grad_norm"]) < GRAD_NORM_RTOL * ref["grad_norm"], step


def test_zero3_two_processes_give_the_megatron_losses(zero3_run, megatron_run):
    assert_same_training(zero3_run, megatron_run)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2])
def test_zero_stage_two_processes_give_the_megatron_losses(tmp_path, megatron_run, stage):
    result = run_deepspeed(tmp_path, stage)
    assert result.returncode == 0, output_of(result)
    assert_same_training(tmp_path, megatron_run)


def test_resume_from_a_deepspeed_checkpoint_is_exact(tmp_path, zero3_run):
    """Copy the straight run's iter_0000003 and resume it to step 6: steps 4-6 equal the straight
    run's bit for bit (ZeRO-3 partitions of weights and Adam moments, LR schedule, data position and
    RNG through DeepSpeed's save/load and our trainer state)."""
    ckpt = tmp_path / "checkpoints"
    ckpt.mkdir()
    shutil.copytree(zero3_run / "checkpoints" / "iter_0000003", ckpt / "iter_0000003")
    (ckpt / "latest").write_text("iter_0000003\n")
    result = run_deepspeed(tmp_path, 3)
    assert result.returncode == 0, output_of(result)
    assert "resumed from" in output_of(result)
    resumed, straight = rows_by_step(tmp_path), rows_by_step(zero3_run)
    assert sorted(resumed) == [4, 5, 6]
    for step in (4, 5, 6):
        assert resumed[step]["loss"] == straight[step]["loss"], step
        assert resumed[step]["grad_norm"] == straight[step]["grad_norm"], step


def test_a_crafted_pickle_in_a_deepspeed_checkpoint_runs_nothing(tmp_path, zero3_run):
    """DeepSpeed's own loader unpickles its files: each is read with weights_only here, so a file
    holding anything beyond tensors and DeepSpeed's data classes is refused by name, by every
    rank together, before DeepSpeed's collective load starts (exit 4)."""
    import torch

    from pretrain.errors import EXIT_CHECKPOINT

    ckpt = tmp_path / "checkpoints"
    shutil.copytree(zero3_run / "checkpoints", ckpt)
    folder, marker = ckpt / "iter_0000006", tmp_path / "pwned"
    torch.save({"optimizer_state_dict": Exploit(marker)},
               folder / "zero_pp_rank_1_mp_rank_00_optim_states.pt")
    reseal(folder)
    result = run_deepspeed(tmp_path, 3, "train.max_steps=8")
    assert result.returncode != 0, output_of(result)  # torchrun's own status: 1 when a rank failed
    assert "failed (exitcode: 4)" in output_of(result)
    assert "holds a pickled posix.system" in output_of(result)
    assert "checkpoint.allow_pickle=true" in output_of(result)
    assert not marker.exists(), "the crafted pickle ran"
    converted = convert(folder, tmp_path / "converted")
    assert converted.returncode == EXIT_CHECKPOINT, output_of(converted)
    assert not marker.exists()


ROUND_TRIP = """
import sys, torch
from pretrain.checkpoint import read_weights, resolve_checkpoint
from pretrain.checkpoint.convert import convert_checkpoint
src, megatron_dir, deepspeed_dir = sys.argv[1:4]
megatron = convert_checkpoint(src, megatron_dir)         # what scripts/convert_checkpoint.py calls
back = convert_checkpoint(megatron_dir, deepspeed_dir)
a = read_weights(resolve_checkpoint(src))[1]
b, c = read_weights(megatron)[1], read_weights(back)[1]
assert a.keys() == b.keys() == c.keys() and len(a) > 0, (sorted(a), sorted(b), sorted(c))
for name in a:
    assert a[name].dtype == b[name].dtype == c[name].dtype == torch.float32, name
    assert torch.equal(a[name], b[name]) and torch.equal(a[name], c[name]), name
print("equal", len(a))
"""


def convert(src, dst):
    return subprocess.run([sys.executable, "-m", "scripts.convert_checkpoint", str(src), str(dst)],
                          cwd=REPO, env=trainer_env(), capture_output=True, text=True, timeout=300)


def test_converter_round_trips_weights_bit_for_bit(tmp_path, zero3_run):
    """ZeRO-3 (2 ranks) -> megatron dist checkpoint -> DeepSpeed: every tensor equal, fp32.
    (One process for both conversions and the comparison: each start-up costs ~10 s here.)"""
    done = subprocess.run(
        [sys.executable, "-c", ROUND_TRIP, str(zero3_run / "checkpoints"),
         str(tmp_path / "megatron"), str(tmp_path / "deepspeed")],
        cwd=REPO, env=trainer_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, output_of(done)
    assert "equal" in done.stdout
    with open(tmp_path / "megatron" / f"iter_{STEPS:07d}" / "loopcoder.json") as stream:
        state = json.load(stream)
    assert state["engine"] == "megatron" and state["weights_only"] and state["step"] == STEPS


@pytest.mark.slow
def test_a_run_moves_from_deepspeed_to_megatron(tmp_path, zero3_run):
    """The converted iter_0000003 resumes under engine=megatron at step 4 with the run's data
    position and LR; its first loss (before any update) equals the DeepSpeed run's step-4 loss."""
    converted = convert(zero3_run / "checkpoints" / "iter_0000003", tmp_path / "checkpoints")
    assert converted.returncode == 0, output_of(converted)
    result = run_trainer(tmp_path, *RUN)
    assert result.returncode == 0, output_of(result)
    rows, straight = rows_by_step(tmp_path), rows_by_step(zero3_run)
    assert sorted(rows) == [4, 5, 6]
    assert rows[4]["consumed_samples"] == straight[4]["consumed_samples"]
    assert rows[4]["lr"] == straight[4]["lr"]
    # The loss of step 4 is computed with the step-3 weights: the same weights, data and model.
    assert abs(rows[4]["loss"] - straight[4]["loss"]) < LOSS_ATOL


@pytest.mark.slow
def test_a_run_moves_from_megatron_to_deepspeed_zero3(tmp_path, megatron_run):
    """The megatron run's iter_0000003, converted, resumes under ZeRO-3 on 2 processes (weights
    scattered into partitions and ZeRO's fp32 masters): step 4 equals the megatron run's."""
    converted = convert(megatron_run / "checkpoints" / "iter_0000003", tmp_path / "checkpoints")
    assert converted.returncode == 0, output_of(converted)
    result = run_deepspeed(tmp_path, 3)
    assert result.returncode == 0, output_of(result)
    rows, straight = rows_by_step(tmp_path), rows_by_step(megatron_run)
    assert sorted(rows) == [4, 5, 6]
    assert rows[4]["consumed_samples"] == straight[4]["consumed_samples"]
    assert rows[4]["lr"] == straight[4]["lr"]
    assert abs(rows[4]["loss"] - straight[4]["loss"]) < LOSS_ATOL
    # Steps 5 and 6 differ a little: the Adam moments restart from zero after a move.


def test_megatron_checkpoint_is_refused_by_deepspeed_with_the_converter_command(tmp_path,
                                                                              megatron_run):
    """One process (DeepSpeed in a world of one): exit 2, the message names the converter."""
    result = run_trainer(tmp_path, "engine=deepspeed", *RUN,
                         f"checkpoint.resume={megatron_run}/checkpoints")
    assert result.returncode == 2, output_of(result)
    assert "written by engine=megatron" in output_of(result)
    assert "python -m scripts.convert_checkpoint" in output_of(result)


@pytest.mark.parametrize("overrides, message", [
    ({"parallel.tp": 2}, "engine=deepspeed runs data parallel only (ZeRO), but parallel.tp=2"),
    ({"parallel.pp": 2}, "parallel.pp=2; use parallel.tp=1 parallel.pp=1, or engine=megatron"),
    ({"parallel.distributed_optimizer": True}, "use deepspeed.zero_stage=1"),
    ({"deepspeed.zero_stage": 4}, "deepspeed.zero_stage=4; use 0, 1, 2 or 3"),
    ({"deepspeed.offload_param": "cpu"}, "offload_param=cpu needs deepspeed.zero_stage=3"),
    ({"deepspeed.offload_optimizer": "nvme"}, "deepspeed.offload_optimizer='nvme'; use none or cpu"),
])
def test_what_the_engine_cannot_do_is_refused_by_name(overrides, message):
    from omegaconf import OmegaConf

    from pretrain.config import Config, ConfigError, validate

    config = OmegaConf.structured(Config)
    config.run_dir = "unused"
    config.engine = "deepspeed"
    config.train.micro_batch_size = 1     # so that every layout below divides the global batch
    for key, value in overrides.items():
        OmegaConf.update(config, key, value)
    with pytest.raises(ConfigError) as error:
        validate(OmegaConf.to_object(config), world_size=2)
    assert message in str(error.value)
