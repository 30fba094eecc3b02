"""Checkpoints that survive things: async saves, non-finite steps, incomplete or missing checkpoint
parts, a full disk. Every run is `python -m pretrain.train` in a subprocess, as a user runs it.

Resumed runs must equal a straight run exactly (the same fp32 arithmetic in one process, the same
data order and RNG states): `==` on the losses, no tolerance.
"""

import os
import shutil
import subprocess

import pytest

from pretrain.checkpoint import verify_complete
from pretrain.errors import EXIT_CHECKPOINT, EXIT_DIVERGED
from tests.fixtures import (REPO, SMALL, output_of, read_metrics, run_trainer, small_data,
                            trainer_command, trainer_env)

# A fixed LR schedule length so that a run stopped early and a straight run share it.
RESUMABLE = SMALL + small_data() + ["train.decay_steps=20"]


def loss_rows(run_dir):
    return [row for row in read_metrics(run_dir) if "loss" in row]  # not the diagnostics rows


def losses_by_step(run_dir):
    return {row["step"]: row["loss"] for row in loss_rows(run_dir)}


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("straight")
    result = run_trainer(run_dir, "train.max_steps=8", "checkpoint.interval=2", *RESUMABLE)
    assert result.returncode == 0, output_of(result)
    return run_dir


def test_async_save_resumes_like_a_straight_run(straight_run, tmp_path):
    """Async saves every 2 steps up to step 4, then a resume to step 8: same losses as straight."""
    first = run_trainer(tmp_path, "train.max_steps=4", "checkpoint.interval=2",
                        "checkpoint.async_save=true", *RESUMABLE)
    assert first.returncode == 0, output_of(first)
    root = tmp_path / "checkpoints"
    assert sorted(os.listdir(root)) == ["iter_0000002", "iter_0000004", "latest"]
    assert (root / "latest").read_text() == "iter_0000004\n"
    verify_complete(str(root / "iter_0000004"))
    second = run_trainer(tmp_path, "train.max_steps=8", "checkpoint.interval=2",
                         "checkpoint.async_save=true", *RESUMABLE)
    assert second.returncode == 0, output_of(second)
    assert "resumed from" in output_of(second)
    assert losses_by_step(tmp_path) == losses_by_step(straight_run)


def test_nan_step_is_skipped_and_the_run_finishes(tmp_path):
    result = run_trainer(tmp_path, "train.max_steps=6", "debug.nan_loss_at_steps=[3]", *RESUMABLE)
    assert result.returncode == 0, output_of(result)
    rows = {row["step"]: row for row in loss_rows(tmp_path)}
    assert sorted(rows) == [1, 2, 3, 4, 5, 6]
    assert rows[3]["skipped"] and rows[3]["skipped_steps"] == 1
    # No update at step 3: the weights stayed finite and training went on.
    for step in (4, 5, 6):
        assert rows[step]["loss"] == pytest.approx(rows[step]["loss"])  # not NaN
        assert "skipped" not in rows[step]


def test_too_many_skipped_steps_in_a_row_stop_the_run(tmp_path):
    result = run_trainer(tmp_path, "train.max_steps=8", "checkpoint.interval=2",
                         "train.max_skipped_steps=2", "debug.nan_loss_at_steps=[3,4,5]", *RESUMABLE)
    assert result.returncode == EXIT_DIVERGED, output_of(result)
    assert "steps 3-5: 3 steps in a row had a non-finite loss or gradient norm " \
           "(train.max_skipped_steps=2)" in output_of(result)
    # The checkpoint of step 4 (a skipped step: the weights of step 2) is the newest; nothing later.
    assert (tmp_path / "checkpoints" / "latest").read_text() == "iter_0000004\n"


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_incomplete_checkpoint_is_refused_and_left_alone(straight_run, tmp_path, damage):
    root = tmp_path / "checkpoints"
    shutil.copytree(straight_run / "checkpoints", root)
    part = root / "iter_0000008" / "__0_1.distcp"
    if damage == "missing":
        part.unlink()
    else:
        with open(part, "r+b") as stream:
            stream.truncate(1000)
    before = sorted(os.listdir(root / "iter_0000008"))
    result = run_trainer(tmp_path, "train.max_steps=10", *RESUMABLE)
    assert result.returncode == EXIT_CHECKPOINT, output_of(result)
    assert "cannot resume from" in output_of(result)
    # Found by the checksums, which are compared before anything (.metadata) is parsed.
    assert {"missing": "iter_0000008 is damaged: __0_1.distcp is missing",
            "truncated": "iter_0000008 is damaged: __0_1.distcp has 1000 bytes"}[damage] in (
        output_of(result)), output_of(result)
    assert "checkpoint.resume=" in output_of(result)  # names the way out (an older one, or none)
    assert sorted(os.listdir(root / "iter_0000008")) == before
    assert (root / "latest").read_text() == "iter_0000008\n"


def test_latest_naming_a_missing_folder_is_a_clear_error(tmp_path):
    root = tmp_path / "checkpoints"
    root.mkdir()
    (root / "latest").write_text("iter_0000042\n")
    result = run_trainer(tmp_path, "train.max_steps=2", *RESUMABLE)
    assert result.returncode == EXIT_CHECKPOINT, output_of(result)
    assert "names" in output_of(result) and "iter_0000042, which does not exist" in output_of(result)


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs: one checkpoint of the small model (2.2 MB) fits, a second does not."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=False)


def test_full_disk_during_save_keeps_the_previous_checkpoint(tmp_path, small_disk):
    result = run_trainer(tmp_path / "run", "train.max_steps=6", "checkpoint.interval=2",
                         "checkpoint.keep=1", f"checkpoint.dir={small_disk}", *RESUMABLE)
    assert result.returncode != 0, output_of(result)
    assert "cannot write checkpoint iter_0000004" in output_of(result)
    # The half-written folder is gone, `latest` and the checkpoint it names are intact.
    assert sorted(os.listdir(small_disk)) == ["iter_0000002", "latest"]
    assert (small_disk / "latest").read_text() == "iter_0000002\n"
    verify_complete(str(small_disk / "iter_0000002"))


@pytest.mark.parametrize("async_save", ["false", "true"])
def test_second_signal_while_the_stop_checkpoint_is_written(tmp_path, async_save):
    """SIGUSR1, then SIGTERM the moment the checkpoint's .tmp_ folder appears: the save finishes,
    `latest` names a complete checkpoint, exit 75."""
    import signal
    import time

    from pretrain.signals import EXIT_REQUEUE

    process = subprocess.Popen(
        trainer_command(tmp_path, "train.max_steps=200", "checkpoint.interval=0",
                        f"checkpoint.async_save={async_save}", *RESUMABLE),
        cwd=REPO, env=trainer_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics, root = tmp_path / "metrics.jsonl", tmp_path / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGUSR1)
    while time.time() < deadline and process.poll() is None:
        if root.exists() and any(n.startswith(".tmp_") for n in os.listdir(root)):
            break
        time.sleep(0.001)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=240)
    assert process.returncode == EXIT_REQUEUE, output
    latest = root / (root / "latest").read_text().strip()
    verify_complete(str(latest))
    assert not [n for n in os.listdir(root) if n.startswith(".tmp_")]


@pytest.mark.parametrize("when", ["first_save", "after_first_save"])
def test_stop_signals_to_every_process_of_the_run(tmp_path, when):
    """SLURM signals every process of a job step, not only the trainer: the checkpoint writer has
    helper processes (the results queue's server, megatron-core's forked writers). SIGTERM and
    SIGUSR1 in turn to the whole process group every 20 ms until the run ends (scancel, the
    launcher forwarding it, the time-limit warning), from while the first save runs or from once it
    is done: the stop checkpoint is written and the run exits 75, not a death by signal. (With
    megatron's own server, which died of them, the save failed; a late signal during the shutdown
    turned 75 into -10.)"""
    import signal
    import time

    from pretrain.signals import EXIT_REQUEUE

    process = subprocess.Popen(
        trainer_command(tmp_path, "train.max_steps=200", "checkpoint.interval=2", *RESUMABLE),
        cwd=REPO, env=trainer_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    root = tmp_path / "checkpoints"
    deadline = time.time() + 240

    def saving():
        return root.exists() and any(n.startswith(".tmp_") for n in os.listdir(root))

    ready = saving if when == "first_save" else (lambda: (root / "latest").exists())
    while time.time() < deadline and process.poll() is None and not ready():
        time.sleep(0.001)
    for number in range(100_000):
        if time.time() > deadline or process.poll() is not None:
            break
        try:
            os.killpg(process.pid, (signal.SIGTERM, signal.SIGUSR1)[number % 2])
        except ProcessLookupError:
            break
        time.sleep(0.02)
    output, _ = process.communicate(timeout=240)
    assert process.returncode == EXIT_REQUEUE, output
    assert "at a checkpoint; exit 75" in output, output
    latest = (root / "latest").read_text().strip()
    verify_complete(str(root / latest))
    assert not [n for n in os.listdir(root) if n.startswith(".tmp_")]


def test_the_checkpoint_writers_helper_dies_with_a_killed_trainer(tmp_path):
    """The results queue's server ignores the stop signals, so it must notice by itself that its
    trainer is gone (kill -9 of the trainer alone: no exit hook ran) and exit, not live on; and it
    is small (the standard library only, not torch)."""
    import signal
    import time

    import psutil

    process = subprocess.Popen(
        trainer_command(tmp_path, "train.max_steps=200", "checkpoint.interval=2", *RESUMABLE),
        cwd=REPO, env=trainer_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not (tmp_path / "checkpoints" / "latest").exists():
        assert process.poll() is None
        time.sleep(0.05)
    helpers = [child for child in psutil.Process(process.pid).children()
               if "results_queue_server.py" in " ".join(child.cmdline())]
    assert len(helpers) == 1, [child.cmdline() for child in helpers]
    assert helpers[0].memory_info().rss < 100 * 2**20
    process.send_signal(signal.SIGKILL)
    process.wait()
    _, alive = psutil.wait_procs(helpers, timeout=10)
    assert not alive
