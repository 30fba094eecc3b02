"""Stress: SIGTERM a two-rank run at random moments, again and again, while saves are in flight and
with every core busy; every time both ranks must exit 75 with a complete checkpoint, and the next
life must resume from it. (A two-rank save once hung after a stop signal: the checkpoint writer's
results queue, pretrain/engines/megatron_results_queue.py.)

The ranks are started as SLURM starts them, one process each with RANK/WORLD_SIZE and the
rendezvous in the environment, not under torchrun: SLURM signals every task itself (launch/script.py
explains why production runs no torchrun agent), and each rank's own exit status is what the batch
script reads. Each life runs until its first step is logged, then waits a seeded random delay and
sends SIGTERM to both ranks or to one of them (a scheduler may signal only some: the ranks agree
through an all-reduce). Lives vary, by the same seed: a save every step, synchronous or in the
background (so the signal lands in a save), the signal sent the moment a save's .tmp_ folder
appears, or saves only on the signal; half of them get a second SIGTERM while the stop checkpoint
is written. A busy-loop process per core runs from each life's first step to its end (not during
its start-up, which only made the test slower). A rank
that has not exited after HANG_S is a hang: both get SIGUSR2 (pretrain/signals.py prints every
thread's stack) and the test fails showing them. The last life resumes and trains one step to the
end (exit 0).
"""

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from pretrain.checkpoint import verify_complete
from pretrain.distributed import free_port
from pretrain.run_files import read_rows
from pretrain.signals import EXIT_REQUEUE
from tests.fixtures import REPO, SMALL, small_data, trainer_command, trainer_env

pytestmark = [pytest.mark.slow, pytest.mark.distributed]
# Six lives in `make test` (each kind of life at least once; ~2 min); a longer soak:
# LOOPCODER_STRESS_LIVES=40 pytest tests/test_signals_stress.py (34 lives ran without a hang).
LIVES = int(os.environ.get("LOOPCODER_STRESS_LIVES", "6"))
SEED, HANG_S, START_S = 20261204, 120, 300
COMMON = SMALL + small_data() + ["train.decay_steps=1000", "diagnostics.interval=0",
                                 "checkpoint.keep=2"]
ENDLESS = ["train.max_steps=100000"]
KINDS = {  # how a life saves, and when its signal fires
    "every step, async": ["checkpoint.interval=1", "checkpoint.async_save=true"],
    "every step": ["checkpoint.interval=1"],
    "at a .tmp_ folder": ["checkpoint.interval=2", "checkpoint.async_save=true"],
    "only on the signal": ["checkpoint.interval=0"],
}


def start_ranks(run_dir, overrides, log_dir, life):
    port, processes = free_port(), []
    for rank in range(2):
        env = trainer_env()
        env.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port))
        with open(log_dir / f"life{life}_rank{rank}.log", "w") as log:
            processes.append(subprocess.Popen(trainer_command(run_dir, *overrides), cwd=REPO,
                                              env=env, stdout=log, stderr=subprocess.STDOUT,
                                              start_new_session=True))
    return processes


def busy_cores():
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(os.cpu_count() or 2)]


def logged_step(run_dir) -> int:
    path = run_dir / "metrics.jsonl"
    rows = read_rows(str(path), warn=lambda _: None) if path.exists() else []
    return max((row.get("step", 0) for row in rows), default=0)


def saving(root) -> bool:
    return root.exists() and any(n.startswith(".tmp_") for n in os.listdir(root))


def wait_for(condition, processes, timeout_s) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        if any(p.poll() is not None for p in processes):
            return False
        time.sleep(0.005)
    return False


def logs(log_dir, life, tail=6000) -> str:
    """Both ranks' logs of one life; `tail` keeps a failure message short (None: all of it, for
    assertions: a busy life's log outgrows the tail and its first lines, such as the resume line,
    would fall off)."""
    return "\n".join(f"--- rank {r} ---\n"
                     + (log_dir / f"life{life}_rank{r}.log").read_text()[-(tail or 0):]
                     for r in range(2))


def finish(processes, log_dir, life) -> list:
    """Each rank's exit status; a rank still running after HANG_S is a hang: dump its stacks."""
    deadline = time.monotonic() + HANG_S
    for process in processes:
        try:
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for other in processes:
                if other.poll() is None:
                    os.kill(other.pid, signal.SIGUSR2)
            time.sleep(3)
            for other in processes:
                if other.poll() is None:
                    os.killpg(other.pid, signal.SIGKILL)
                    other.wait()
            pytest.fail(f"life {life}: a rank hung after the stop signal; stacks:\n"
                        + logs(log_dir, life))
    return [process.returncode for process in processes]


def test_sigterm_at_random_moments_always_leaves_a_resumable_checkpoint(tmp_path):
    run_dir, root, log_dir = tmp_path / "run", tmp_path / "run" / "checkpoints", tmp_path
    rng, saved_at, seen = random.Random(SEED), 0, set()
    for life in range(1, LIVES + 1):
        kind = list(KINDS)[(life - 1) % len(KINDS)] if life <= len(KINDS) else rng.choice(list(KINDS))
        targets = rng.choice([(0, 1), (0, 1), (0,), (1,)])
        delay = rng.uniform(0.0, 1.5)
        again = rng.uniform(0.0, 0.5) if rng.random() < 0.5 else None
        load = []
        try:
            processes = start_ranks(run_dir, COMMON + ENDLESS + KINDS[kind], log_dir, life)
            started = wait_for(lambda: logged_step(run_dir) > saved_at, processes, START_S)
            assert started, f"life {life} did not reach a step:\n{logs(log_dir, life)}"
            load = busy_cores()  # from the first step on: the signal, the saves, the shutdown
            if kind == "at a .tmp_ folder":
                wait_for(lambda: saving(root), processes, 60)
            else:
                time.sleep(delay)
            mid_save = saving(root)
            for rank in targets:
                processes[rank].send_signal(signal.SIGTERM)
            if again is not None:  # a second signal while the stop checkpoint is written
                time.sleep(again)
                for process in processes:
                    if process.poll() is None:
                        process.send_signal(signal.SIGTERM)
            statuses = finish(processes, log_dir, life)
        finally:
            for process in load:
                process.kill()
                process.wait()
        assert statuses == [EXIT_REQUEUE, EXIT_REQUEUE], (life, kind, statuses, logs(log_dir, life))
        if life > 1:  # it loaded the previous life's checkpoint and went on from there
            resumed = f"resumed from {root}/iter_{saved_at:07d}: step {saved_at}"
            whole = logs(log_dir, life, tail=None)
            assert resumed in whole, (resumed, whole[:20000])
        latest = (root / "latest").read_text().strip()
        verify_complete(str(root / latest))
        assert not [n for n in os.listdir(root) if n.startswith(".tmp_")], life
        saved_at = int(latest.removeprefix("iter_"))
        seen.add((kind, mid_save))
        print(f"life {life}: {kind}, SIGTERM to rank(s) {targets} after {delay:.2f} s"
              f"{' during a save' if mid_save else ''}"
              f"{'' if again is None else f', again after {again:.2f} s'}: exit 75, {latest}")

    assert any(mid for _, mid in seen), "no signal landed while a save was in flight"
    processes = start_ranks(run_dir, COMMON + [f"train.max_steps={saved_at + 1}"], log_dir,
                            LIVES + 1)
    assert finish(processes, log_dir, LIVES + 1) == [0, 0], logs(log_dir, LIVES + 1)
    assert (root / "latest").read_text() == f"iter_{saved_at + 1:07d}\n"
