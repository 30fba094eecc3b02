"""Plot one run: loss against tokens, and the per-loop diagnostics over steps.

    python scripts/plot_run.py RUN_DIR [--out FILE.png]      # default: RUN_DIR/run.png

Reads the run's files only (docs/run_folder.md#metricsjsonl): `metrics.jsonl` rows with `loss`
are train rows (step, consumed_samples, loss, ...; eval steps add `val_loss`), rows with `loop` are
the loop diagnostics (model/diagnostics.py); `config.yaml` gives train.seq_length for the token axis.
Prints the numbers behind the figure as a short table.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Dict, List, Optional

import matplotlib

matplotlib.use("Agg")  # files only; no display on a cluster node
import matplotlib.pyplot as plt  # noqa: E402

from pretrain.run_files import read_rows  # noqa: E402

# The diagnostics worth a panel each (model/diagnostics.py METRICS, minus the attention details).
PANELS = ("output_shift", "offset_cost", "step_size", "angular_change", "effective_rank", "gate_mean")


class Run:
    """A run folder's metrics.jsonl split into train rows and diagnostics rows, plus its config."""

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        path = os.path.join(run_dir, "metrics.jsonl")
        if not os.path.isdir(run_dir):
            raise FileNotFoundError(f"{run_dir} is not a folder; pass a run folder (the run_dir a "
                                    f"training command wrote, e.g. outputs/<run>)")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} does not exist: {run_dir} is not a run folder, or its "
                                    f"run has not logged a step yet; pass a run folder (its run_dir)")
        rows = read_rows(path, warn=_warn)  # a torn last line (a crash) is dropped, named
        self.rows = rows
        self.train = [row for row in rows if "loss" in row]
        self.diagnostics = [row for row in rows if "loop" in row]
        self.config = _read_config(run_dir)

    def get(self, dotted: str, default=None):
        node = self.config
        for key in dotted.split("."):
            if not isinstance(node, dict) or key not in node:
                return default
            node = node[key]
        return node

    def tokens(self, row: dict) -> float:
        """Tokens seen at a train row: consumed_samples x seq_length (steps if the length is unknown)."""
        seq_length = self.get("train.seq_length")
        return row["consumed_samples"] * seq_length if seq_length else row["step"]

    @property
    def x_label(self) -> str:
        return "tokens" if self.get("train.seq_length") else "step"

    def loss_curve(self, key: str = "loss"):
        rows = [row for row in self.train if key in row and _finite(row[key])]
        return [self.tokens(row) for row in rows], [row[key] for row in rows]

    def loops(self) -> List[int]:
        return sorted({row["loop"] for row in self.diagnostics})

    def diagnostic_curve(self, loop: int, metric: str):
        rows = [row for row in self.diagnostics if row["loop"] == loop and _finite(row.get(metric))]
        return [row["step"] for row in rows], [row[metric] for row in rows]

    def last_diagnostics(self) -> Dict[int, dict]:
        """{loop: row} at the last step that logged diagnostics."""
        if not self.diagnostics:
            return {}
        last = max(row["step"] for row in self.diagnostics)
        return {row["loop"]: row for row in self.diagnostics if row["step"] == last}

    def final(self, key: str) -> Optional[float]:
        values = self.loss_curve(key)[1]
        return values[-1] if values else None


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _read_config(run_dir: str) -> dict:
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(path):
        return {}
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4g}"


def plot_run(run: Run, out: str) -> str:
    panels = [m for m in PANELS if any(_finite(row.get(m)) for row in run.diagnostics)]
    fig, axes = plt.subplots(1, 1 + len(panels), figsize=(4.2 * (1 + len(panels)), 3.6),
                             squeeze=False)
    ax = axes[0][0]
    for key, label in (("loss", "train"), ("val_loss", "valid")):
        x, y = run.loss_curve(key)
        if x:
            ax.plot(x, y, label=label, marker="o" if key == "val_loss" else None)
    ax.set(xlabel=run.x_label, ylabel="loss", title=os.path.basename(os.path.normpath(run.run_dir)))
    ax.legend()
    for ax, metric in zip(axes[0][1:], panels):
        for loop in run.loops():
            x, y = run.diagnostic_curve(loop, metric)
            if x:
                ax.plot(x, y, label=f"loop {loop}", marker=".")
        ax.set(xlabel="step", title=metric.replace("_", " "))
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def summary(run: Run) -> str:
    lines = [f"{run.run_dir}: final loss {_fmt(run.final('loss'))}, "
             f"final valid loss {_fmt(run.final('val_loss'))}"]
    last = run.last_diagnostics()
    if last:
        step = next(iter(last.values()))["step"]
        lines.append(f"diagnostics at step {step}:")
        lines.append("loop " + " ".join(f"{m:>15}" for m in PANELS))
        for loop, row in sorted(last.items()):
            lines.append(f"{loop:>4} " + " ".join(f"{_fmt(row.get(m)):>15}" for m in PANELS))
    return "\n".join(lines)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--out", help="PNG to write (default: RUN_DIR/run.png)")
    args = parser.parse_args(argv)
    run = Run(args.run_dir)
    out = plot_run(run, args.out or os.path.join(args.run_dir, "run.png"))
    print(summary(run))
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    from pretrain.errors import run_tool

    sys.exit(run_tool(main))
