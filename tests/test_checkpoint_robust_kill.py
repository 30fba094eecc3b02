"""Torture: `kill -9` the trainer at random moments, some of them while a checkpoint is being
written, resume after each kill, and end with exactly the losses of an uninterrupted run.

The kill moments come from a seeded RNG: half of them fire when the Nth save of a life has started
writing (its `.tmp_iter_*` folder appeared, plus 0-40 ms), the rest at a random time after start
(start-up, a step or a save), at the latest after 1-4 of that life's steps. After each kill,
`latest` must name a complete checkpoint (every file the dist format's metadata refers to is there
and long enough) and no other state may be required: the next start resumes from it. Exactness: one process, fp32, the same data order and RNG states, so
the resumed losses are compared with `==`.
"""

import os
import random
import signal
import subprocess
import time

import pytest

from pretrain.checkpoint import verify_complete
from tests.fixtures import (REPO, SMALL, output_of, read_metrics, run_trainer, small_data,
                            trainer_command, trainer_env)

pytestmark = pytest.mark.slow
STEPS, KILLS, SEED = 40, 10, 20261129
COMMON = SMALL + small_data() + [f"train.max_steps={STEPS}", "checkpoint.interval=2",
                                 "checkpoint.keep=2"]


def losses(run_dir):
    return {row["step"]: row["loss"] for row in read_metrics(run_dir) if "loss" in row}


def tmp_folders(root, since=0.0):
    """Half-written checkpoint folders (created after `since`, a time.time())."""
    found = []
    for name in os.listdir(root) if os.path.isdir(root) else []:
        try:
            if name.startswith(".tmp_") and os.stat(os.path.join(root, name)).st_mtime >= since:
                found.append(name)
        except FileNotFoundError:  # renamed into place meanwhile
            pass
    return sorted(found)


def rows(metrics) -> int:
    return len(metrics.read_text().splitlines()) if metrics.exists() else 0


def kill_when(process, root, rng):
    """Wait for this life's kill moment; returns True if a save of this life was in flight when it
    fired (a `.tmp_` folder it created), None if the process finished first."""
    started = time.time()
    if rng.random() < 0.5:
        nth_save, seen = rng.randint(1, 3), set()
        while process.poll() is None:
            seen.update(tmp_folders(root, since=started))
            if len(seen) >= nth_save:
                time.sleep(rng.uniform(0.0, 0.04))
                break
            time.sleep(0.002)
    else:
        # A random time, but no later than a few of this life's steps: a life must not outrun its
        # kill by finishing the run (how long a life takes is the machine's, not the seed's).
        deadline, steps = time.monotonic() + rng.uniform(1.0, 9.0), rng.randint(1, 4)
        rows_before = rows(root.parent / "metrics.jsonl")
        while (process.poll() is None and time.monotonic() < deadline
               and rows(root.parent / "metrics.jsonl") - rows_before < steps):
            time.sleep(0.01)
    if process.poll() is not None:
        return None  # it finished first
    mid_save = bool(tmp_folders(root, since=started))
    # The whole process group, as a dead node or the scheduler takes it: the trainer and its
    # helpers (megatron's checkpoint writer processes), which would otherwise live on as orphans.
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return mid_save


def test_kill_nine_at_random_moments_loses_nothing(tmp_path, tmp_path_factory):
    reference_dir = tmp_path_factory.mktemp("uninterrupted")
    reference = run_trainer(reference_dir, *COMMON, timeout=600)
    assert reference.returncode == 0, output_of(reference)

    rng, root = random.Random(SEED), tmp_path / "checkpoints"
    kills = mid_save = lives = 0
    resumed_from = []
    while True:
        lives += 1
        assert lives <= KILLS + 5, "the run did not finish"
        with open(tmp_path / f"life{lives}.log", "w") as log:
            process = subprocess.Popen(trainer_command(tmp_path, *COMMON), cwd=REPO,
                                       env=trainer_env(), stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
            landed = kill_when(process, root, rng) if kills < KILLS else None
        if landed is None:
            assert process.wait(timeout=600) == 0, (tmp_path / f"life{lives}.log").read_text()
            break
        kills += 1
        mid_save += landed
        # What the next life will resume from is complete.
        if (root / "latest").exists():
            latest = root / (root / "latest").read_text().strip()
            verify_complete(str(latest))
            resumed_from.append(latest.name)

    print(f"{kills} kills, {mid_save} while a save was in flight, {lives} lives, resumed from "
          f"{resumed_from}")
    assert kills == KILLS
    assert mid_save >= 3, "too few kills landed mid-save to test anything"
    assert (root / "latest").read_text() == f"iter_{STEPS:07d}\n"
    assert tmp_folders(root) == []
    assert losses(tmp_path) == losses(reference_dir)
    assert sorted(losses(tmp_path)) == list(range(1, STEPS + 1))
