"""Run many samples, each against its tests with the completion in a sandbox of its own, on a pool
of workers.

    outcomes = execute(jobs, sandbox, workers=4)   # jobs: [(Problem, completion)], same order out

Each worker is a thread with a slot number, where its search for a free sandbox user starts (as
root every run leases a uid of its own: evaluation/sandbox_users.py). The programs run in child
processes, so threads are enough to keep W of them going. A sample the machinery cannot run (an
error of the harness on that sample) fails with the reason in its result; the others go on.
"""

from __future__ import annotations

import queue
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import List, Sequence, Tuple

from tqdm import tqdm

from evaluation.problems import Problem
from evaluation.sandbox import Outcome, Sandbox


def execute(jobs: Sequence[Tuple[Problem, str]], sandbox: Sandbox, workers: int,
            progress: bool = True) -> List[Outcome]:
    if workers < 1:
        raise ValueError(f"workers={workers}; run at least one sandbox at a time (--workers 1)")
    free_slots: "queue.SimpleQueue[int]" = queue.SimpleQueue()
    for slot in range(workers):
        free_slots.put(slot)

    def run_one(job: Tuple[Problem, str]) -> Outcome:
        slot = free_slots.get()
        started = time.monotonic()
        try:
            return sandbox.run(*job, slot)
        except Exception as error:  # noqa: BLE001 a sample the machinery cannot run fails alone
            message = " ".join(str(error).split())[:200]
            return Outcome(False, f"failed: not run: {type(error).__name__}: {message}",
                           time.monotonic() - started)
        finally:
            free_slots.put(slot)

    with ThreadPoolExecutor(max_workers=workers) as pool, tqdm(
            total=len(jobs), desc="execute", unit="sample", disable=not progress) as bar:
        futures = [pool.submit(run_one, job) for job in jobs]
        for _ in as_completed(futures):
            bar.update()
        return [future.result() for future in futures]
