"""What is logged where: one console line, one row of `<run_dir>/metrics.jsonl`, and wandb.

Rows carry at least step, consumed_samples, loss, lr, grad_norm and tokens_per_s (the contract in
docs/run_folder.md#metricsjsonl), plus mfu, step_time_s, memory_gb and, on eval steps, val_loss. Only rank 0
writes; the values are already global (reduced over data-parallel ranks by the engine). A value
that is not finite (a skipped step's NaN loss) is written as null (pretrain/run_files.py); a crash
mid-write leaves at most a torn last line, which the next start cuts off.
"""

from __future__ import annotations

import logging
import os
import resource
import sys
import uuid

from pretrain.run_files import (append_rows, json_line, read_rows, valid_length,
                                write_file_atomically)

logger = logging.getLogger("pretrain")


def peak_memory_gb() -> float:
    """Peak CUDA memory allocated on GPU, else this process's peak resident set size."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return rss_kb / 2**20 if sys.platform != "darwin" else rss_kb / 2**30


# The console line: (key, how it is shown), in this order, for the keys a row has.
CONSOLE_FIELDS = (
    ("loss", "loss {:.4f}"), ("val_loss", "val {:.4f}"), ("lr", "lr {:.2e}"),
    ("grad_norm", "grad {:.2f}"), ("humaneval_nll", "code nll {:.3f}"),
    ("humaneval_pass@1", "pass@1 {:.3f}"), ("tokens_per_s", "{:,.0f} tok/s"),
    ("mfu", "mfu {:.1%}"), ("step_time_s", "{:.2f} s/step"), ("memory_gb", "mem {:.2f} GB"),
)


def format_row(row: dict, max_steps: int) -> str:
    parts = [f"step {row['step']:>{len(str(max_steps))}}/{max_steps}"]
    parts += [shown.format(row[key]) for key, shown in CONSOLE_FIELDS if key in row]
    return " | ".join(parts)


class MetricsLogger:
    def __init__(self, run_dir: str, is_main: bool, max_steps: int, wandb_cfg, config_dict: dict,
                 *, resume_step: int = 0):
        self.is_main, self.max_steps = is_main, max_steps
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self.wandb_run = None
        if not is_main:
            return
        _truncate_after(self.path, resume_step)
        if wandb_cfg.mode != "disabled":
            os.environ.setdefault("WANDB_SILENT", "true")
            import wandb

            self.wandb_run = wandb.init(
                mode=wandb_cfg.mode, project=wandb_cfg.project, entity=wandb_cfg.entity,
                name=wandb_cfg.name or os.path.basename(os.path.normpath(run_dir)),
                dir=run_dir, config=config_dict, resume="allow",
                id=_wandb_id(run_dir),
            )

    def log(self, row: dict) -> None:
        if not self.is_main:
            return
        logger.info(format_row(row, self.max_steps))
        self._append([row], f"step {row['step']}")
        if self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])

    def log_diagnostics(self, rows: list, step: int) -> None:
        """Per-loop diagnostics: one metrics.jsonl row per loop (with its ``loop`` key), wandb
        scalars named diagnostics/loop<r>/<metric>, and one console line."""
        if not self.is_main:
            return
        from model.diagnostics import flatten_for_metrics, scalars_for_wandb

        self._append(flatten_for_metrics(rows, step), f"the diagnostics of step {step}")
        if self.wandb_run is not None:
            self.wandb_run.log(scalars_for_wandb(rows), step=step)
        parts = []
        for row in rows:
            shown = [f"{name} {row[key]:.3g}" for key, name in (
                ("step_size", "step"), ("offset_cost", "offset"), ("output_shift", "shift"),
                ("gate_mean", "gate")) if row.get(key) is not None]
            parts.append(f"loop {row['loop']}: " + " ".join(shown))
        logger.info(f"diagnostics step {step} | " + " | ".join(parts))

    def _append(self, rows: list, what: str) -> None:
        """A failed write (a full disk) is cut off and reported, and the run goes on: only rank 0
        writes, and an error raised here alone would leave the other ranks waiting in the next
        collective. The console line holds the values; a full disk stops the run at its next
        checkpoint anyway (exit 4, decided by all ranks)."""
        try:
            append_rows(self.path, rows)
        except OSError as error:
            logger.warning("%s: could not append %s (%s); those values are only in the console "
                           "log", self.path, what, error)

    def finish(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None


def _wandb_id(run_dir: str) -> str:
    """One wandb run per run folder, so a resumed run continues the same wandb run: the id, and the
    folder it was made for, in `.wandb_id`. A folder that was moved keeps its id; a copy (the
    folder the id was made for still holds the same id) gets a new one, so that it does not log
    into the original's wandb run."""
    path, here = os.path.join(run_dir, ".wandb_id"), os.path.realpath(run_dir)
    run_id = None
    if os.path.isfile(path):
        with open(path) as stream:
            run_id, _, made_for = (stream.read().strip() + "\n").partition("\n")
        made_for = made_for.strip()
        if made_for and made_for != here and _wandb_id_in(made_for) == run_id:
            logger.info("%s is a copy of %s: a new wandb run", run_dir, made_for)
            run_id = None
    run_id = run_id or uuid.uuid4().hex[:8]  # (an empty file from older versions: a new id)
    write_file_atomically(path, f"{run_id}\n{here}\n")
    return run_id


def _wandb_id_in(folder: str):
    try:
        with open(os.path.join(folder, ".wandb_id")) as stream:
            return stream.readline().strip()
    except OSError:
        return None


def _truncate_after(path: str, step: int) -> None:
    """On resume from `step`, drop rows logged after it by the interrupted run (they recur), and
    what a crash mid-write left: a torn last line, or a line that is not a row (each named in a
    warning). The file is replaced atomically: a crash at any moment leaves the old one or the new
    one."""
    if not os.path.isfile(path):
        return
    rows = read_rows(path)
    kept = [row for row in rows if row.get("step", 0) <= step]
    with open(path, "rb") as stream:
        lines = sum(1 for line in stream if line.strip())
    if len(kept) != lines or valid_length(path) != os.path.getsize(path):
        try:
            write_file_atomically(path, "".join(json_line(row) for row in kept))
        except OSError as error:  # rank 0 alone: raising would leave the others waiting
            logger.warning("%s: could not drop the rows after step %d (%s); the file is left as "
                           "it was, and readers skip its torn line", path, step, error)
