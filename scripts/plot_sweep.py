"""Plot a loop sweep: loss against tokens per run, and the gain-cost view of every run's loops.

    python scripts/plot_sweep.py RUN_DIR... [--out FILE.png]     (default: sweep.png)

Each run is labelled from its config.yaml (`model.num_loops`, `model.clp`). The right panel is
LoopCoder-v2's gain-cost view (shared/PLT_SPEC.md "Loop diagnostics"): per loop r >= 2, the output
shift KL(p_r || p_{r-1}) (what the loop still changes) against the offset cost (what the CLP shift
costs it), at each run's last diagnostics step. A loop whose shift has collapsed while its cost stays
flat is not worth its compute: that is how to pick R. The table printed below holds the same numbers.
"""

from __future__ import annotations

import argparse
from typing import List

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from scripts.plot_run import Run, _fmt  # noqa: E402


def label(run: Run) -> str:
    loops = run.get("model.num_loops", "?")
    return f"R={loops}" + ("" if run.get("model.clp", True) else " clp=off")


def plot_sweep(runs: List[Run], out: str) -> str:
    fig, (loss_ax, cost_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for run in runs:
        x, y = run.loss_curve("loss")
        line, = loss_ax.plot(x, y, label=label(run))
        vx, vy = run.loss_curve("val_loss")
        if vx:
            loss_ax.plot(vx, vy, "o--", color=line.get_color(), markersize=3)
        loops = [row for _, row in sorted(run.last_diagnostics().items())
                 if row.get("offset_cost") is not None and row.get("output_shift") is not None]
        if loops:
            cost_ax.plot([r["offset_cost"] for r in loops], [r["output_shift"] for r in loops],
                         "o-", color=line.get_color(), label=label(run))
            for row in loops:
                cost_ax.annotate(str(row["loop"]), (row["offset_cost"], row["output_shift"]),
                                 textcoords="offset points", xytext=(4, 4), fontsize="small")
    loss_ax.set(xlabel=runs[0].x_label, ylabel="loss (dashed: valid)", title="loss")
    loss_ax.legend()
    cost_ax.set(xlabel="offset cost  mean ||h_{r-1,i} - h_{r-1,i-1}||",
                ylabel="output shift  KL(p_r || p_{r-1})", title="gain vs cost per loop (labels: r)")
    if cost_ax.lines:
        cost_ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def table(runs: List[Run]) -> str:
    lines = [f"{'run':<14} {'final loss':>10} {'valid loss':>10}  loop: offset cost / output shift"]
    for run in runs:
        loops = "  ".join(f"{loop}: {_fmt(row.get('offset_cost'))} / {_fmt(row.get('output_shift'))}"
                          for loop, row in sorted(run.last_diagnostics().items()) if loop >= 2)
        lines.append(f"{label(run):<14} {_fmt(run.final('loss')):>10} "
                     f"{_fmt(run.final('val_loss')):>10}  {loops or '-'}   ({run.run_dir})")
    return "\n".join(lines)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+")
    parser.add_argument("--out", default="sweep.png")
    args = parser.parse_args(argv)
    runs = sorted((Run(d) for d in args.run_dirs),
                  key=lambda r: (r.get("model.num_loops", 0), not r.get("model.clp", True)))
    out = plot_sweep(runs, args.out)
    print(table(runs))
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
