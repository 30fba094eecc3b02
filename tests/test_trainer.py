"""The trainer end to end, as a user runs it: `python -m pretrain.train` in a subprocess."""

import os
import signal
import subprocess
import time

import pytest

from pretrain.signals import EXIT_REQUEUE
from tests.fixtures import (REPO, SMALL, data_cache_dir, losses_by_step, output_of,
                            read_metrics, run_trainer, small_data, trainer_command,
                            trainer_env)

# Resume tests fix the LR schedule's length (decay_steps) so that a run stopped early and a run that
# goes on share it; then every step of the resumed run must equal the straight run's.
RESUMABLE = SMALL + small_data() + ["train.decay_steps=20", "checkpoint.interval=0"]


@pytest.mark.slow
def test_default_job_trains_and_its_loss_falls(tmp_path):
    """`make train`'s config (tiny PLT R=2, stdlib corpus, its batch and LR) for 30 steps."""
    result = run_trainer(tmp_path, "train.max_steps=30", "eval.interval=15",
                         "logging.wandb.mode=disabled", "sample.max_new_tokens=8",
                         f"data.cache_dir={data_cache_dir()}-default", timeout=900)
    assert result.returncode == 0, output_of(result)
    rows = read_metrics(tmp_path)
    assert [row["step"] for row in rows] == [1, 10, 15, 20, 30]
    for field in ("step", "consumed_samples", "loss", "lr", "grad_norm", "tokens_per_s", "mfu"):
        assert field in rows[0]
    assert rows[-1]["consumed_samples"] == 30 * 8
    # From ln(4096) = 8.3 at step 1 the 4.9M-parameter model reaches ~7.0 within 20-30 steps at
    # LR 3e-3 (measured 6.97-7.10 in several runs); 0.8 below the first loss leaves room for noise.
    assert rows[0]["loss"] > 8.0
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.8, rows
    assert "val_loss" in rows[-1]
    assert "sample (" in output_of(result)
    with open(tmp_path / "checkpoints" / "latest") as stream:
        assert stream.read().strip() == "iter_0000030"


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """20 steps without interruption: the reference for the resume tests."""
    run_dir = tmp_path_factory.mktemp("straight")
    result = run_trainer(run_dir, "train.max_steps=20", *RESUMABLE)
    assert result.returncode == 0, output_of(result)
    losses = losses_by_step(run_dir)
    assert sorted(losses) == list(range(1, 21))
    return losses


def test_resume_is_bitwise_exact(tmp_path, straight_run):
    """10 steps, then a second process resumes from the checkpoint to step 20: every loss is equal
    to the straight run's, bit for bit (same process count and thread count; JSON keeps float64
    exactly). Model, Adam moments, LR schedule, data position and RNG all come back."""
    first = run_trainer(tmp_path, "train.max_steps=10", *RESUMABLE)
    assert first.returncode == 0, output_of(first)
    second = run_trainer(tmp_path, "train.max_steps=20", *RESUMABLE)
    assert second.returncode == 0, output_of(second)
    assert "resumed from" in output_of(second)
    assert losses_by_step(tmp_path) == straight_run
    _assert_cumulative_tokens_and_flops_from_step_0(tmp_path)


def _assert_cumulative_tokens_and_flops_from_step_0(run_dir):
    """`tokens` and `train_flops` count from step 0 across the resume: global batch 4 x 64 tokens
    per step, times the MFU's per-token training FLOPs (model/flops.py)."""
    from omegaconf import OmegaConf

    from model.flops import flops_per_token

    config = OmegaConf.load(run_dir / "config.yaml")
    per_token = flops_per_token(config.model, 64)
    rows = [row for row in read_metrics(run_dir) if "loss" in row]
    assert [row["step"] for row in rows] == list(range(1, 21))
    for row in rows:
        assert row["tokens"] == row["step"] * 4 * 64, row
        assert row["train_flops"] == pytest.approx(row["tokens"] * per_token, rel=1e-12), row


def test_sigusr1_saves_exits_75_and_resume_continues_exactly(tmp_path, straight_run):
    """SIGUSR1 mid-run: the step finishes, a checkpoint is written, exit 75. A SIGTERM right after
    (a second signal during the stop) changes nothing. The resumed run matches the straight one."""
    process = subprocess.Popen(trainer_command(tmp_path, "train.max_steps=20", *RESUMABLE),
                               cwd=REPO, env=trainer_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGUSR1)
    time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=240)
    assert process.returncode == EXIT_REQUEUE, output
    with open(tmp_path / "checkpoints" / "latest") as stream:
        stopped_at = int(stream.read().strip().removeprefix("iter_"))
    assert 3 <= stopped_at < 20, output
    assert not [p for p in os.listdir(tmp_path / "checkpoints") if p.startswith(".tmp")]

    resumed = run_trainer(tmp_path, "train.max_steps=20", *RESUMABLE)
    assert resumed.returncode == 0, output_of(resumed)
    assert f"step {stopped_at}" in output_of(resumed)  # "resumed from ...: step k"
    assert losses_by_step(tmp_path) == straight_run


def test_sweep_runs_each_loop_count_in_its_own_folder(tmp_path):
    result = run_trainer(tmp_path, "model.num_loops=1,2,3", "train.max_steps=3", *SMALL,
                         *small_data(), multirun=True)
    assert result.returncode == 0, output_of(result)
    runs = sorted(p for p in tmp_path.iterdir() if (p / "config.yaml").exists())
    assert len(runs) == 3, list(tmp_path.iterdir())
    from omegaconf import OmegaConf

    loops = []
    for run in runs:
        saved = OmegaConf.load(run / "config.yaml")
        assert saved.run_dir == str(run)
        assert saved.checkpoint.dir == str(run / "checkpoints")
        assert (run / "checkpoints" / "latest").exists()
        assert len(read_metrics(run)) == 3
        loops.append(saved.model.num_loops)
    assert sorted(loops) == [1, 2, 3]


def test_eval_batches_averages_more_validation_batches_and_changes_nothing_else(tmp_path):
    """eval.batches=3 (Megatron's --eval-iters): the validation loss over batches 0..2 differs
    from batch 0's alone, while training (losses, grad norms) is the same step for step."""
    runs = {}
    for batches in (1, 3):
        result = run_trainer(tmp_path / f"b{batches}", "train.max_steps=3", *SMALL, *small_data(),
                             "eval.interval=1", f"eval.batches={batches}",
                             "checkpoint.interval=0")
        assert result.returncode == 0, output_of(result)
        runs[batches] = [row for row in read_metrics(tmp_path / f"b{batches}") if "loss" in row]
    one, three = runs[1], runs[3]
    assert [r["step"] for r in one] == [r["step"] for r in three] == [1, 2, 3]
    trained = [[(r["loss"], r["grad_norm"]) for r in rows] for rows in (one, three)]
    assert trained[0] == trained[1]
    assert all(a["val_loss"] != b["val_loss"] for a, b in zip(one, three)), (one, three)
