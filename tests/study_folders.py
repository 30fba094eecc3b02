"""Synthetic run folders for the loop-study report's tests (tests/test_loop_study.py): a
config.yaml and a metrics.jsonl per cell, in the run folder's own form (docs/run_folder.md), with
curves whose answers are known by construction.

A cell's validation loss at step s is `final + 0.5 * log(max_steps / s)` (so its last evaluation
gives `final`), evaluated every 10 steps; tokens = step x 8 samples x seq_length 16; training
FLOPs = tokens x 1e6 x R (cumulative `train_flops`, unless `flops=False`). Diagnostics rows at
steps 10, 50 and max_steps for loops 1..R.
"""

import json
import math
import os

import yaml

SAMPLES_PER_STEP, SEQ_LENGTH, FLOPS_PER_TOKEN_PER_LOOP = 8, 16, 1e6
ARMS = {"clp": (True, 1), "noclp": (False, 1), "neutral": (True, 0)}


def val_loss(final: float, step: int, max_steps: int) -> float:
    return final + 0.5 * math.log(max_steps / step)


def write_cell(root, name, *, size="m", loops=2, arm="clp", seed=1, final=2.0, max_steps=100,
               stop_at=None, diverge=False, flops=True, offset_cost=0.5, early_rank=10.0,
               offset_slope=0.0, last_val_null=False):
    """One run folder. `stop_at`: the run's last step (stopped early). `diverge`: its last row is a
    skipped step with a null loss. `last_val_null`: its last validation loss is null (NaN).
    `offset_cost` + `offset_slope` x (r - 2): loop r's final offset
    cost. `early_rank`: the last loop's effective rank at step 10 (= T/10)."""
    folder = os.path.join(str(root), name)
    os.makedirs(folder)
    clp, offset = ARMS.get(arm, (True, 1))
    config = {"model": {"name": size, "num_loops": loops, "clp": clp, "clp_offset": offset},
              "train": {"seed": seed, "max_steps": max_steps, "seq_length": SEQ_LENGTH}}
    with open(os.path.join(folder, "config.yaml"), "w") as stream:
        yaml.safe_dump(config, stream)
    last = stop_at or max_steps
    rows = []
    for step in range(10, last + 1, 10):
        tokens = step * SAMPLES_PER_STEP * SEQ_LENGTH
        row = {"step": step, "consumed_samples": step * SAMPLES_PER_STEP,
               "loss": val_loss(final, step, max_steps) - 0.1,
               "val_loss": val_loss(final, step, max_steps)}
        if flops:
            row["train_flops"] = tokens * FLOPS_PER_TOKEN_PER_LOOP * loops
        if step == last:
            row["val_loss"] = None if last_val_null else row["val_loss"]
            row["humaneval_nll"] = final + 1.0
            row["humaneval_pass@1"] = 0.0
        rows.append(row)
        if step in (10, 50, max_steps):
            for loop in range(1, loops + 1):
                rows.append({"step": step, "loop": loop,
                             "effective_rank": early_rank if step == 10 else 20.0 + loop,
                             "offset_cost": offset_cost + offset_slope * (loop - 2)
                             if loop >= 2 else None,
                             "output_shift": 0.1 / loop if loop >= 2 else None})
    if diverge:
        rows.append({"step": last + 1, "consumed_samples": (last + 1) * SAMPLES_PER_STEP,
                     "loss": None, "skipped": True, "skipped_steps": 5})
    with open(os.path.join(folder, "metrics.jsonl"), "w") as stream:
        stream.writelines(json.dumps(row) + "\n" for row in rows)
    return folder


def write_grid(root, finals, size="m", seeds=(1, 2, 3), noise=0.01, **kwargs):
    """Cells for {(R, arm): final val loss}: seed i adds (i - mean seed index) x noise."""
    middle = (len(seeds) - 1) / 2
    for (loops, arm), final in finals.items():
        for i, seed in enumerate(seeds):
            write_cell(root, f"{size}_R{loops}_{arm}_s{seed}", size=size, loops=loops, arm=arm,
                       seed=seed, final=final + (i - middle) * noise, **kwargs)
