"""Plot a loop sweep: loss against tokens per run, the gain-cost view of every run's loops, and the
code metric per run.

    python scripts/plot_sweep.py RUN_DIR... [--out FILE.png]     # default: sweep.png

Each run is labelled from its config.yaml (`model.num_loops`, `model.clp`). The right panel is
LoopCoder-v2's gain-cost view (docs/spec.md#loop-diagnostics): per loop r >= 2, the output
shift KL(p_r || p_{r-1}) (what the loop still changes) against the offset cost (what the CLP shift
costs it), at each run's last diagnostics step. A loop whose shift has collapsed while its cost stays
flat is not worth its compute: that is how to pick R. The third panel, when the runs evaluated code
(`eval.code.interval`, evaluation/), is the HumanEval solution NLL per R over steps: the code
benchmark's own signal, which moves at small scale where pass@1 is still 0. The table printed
below holds the same numbers.
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


CODE_METRIC = "humaneval_nll"   # evaluation/during_training.py: evaluate_code's row
CODE_PASS = "humaneval_pass@1"


def code_rows(run: Run) -> List[dict]:
    """metrics.jsonl rows that carry the code metric, in step order (a row of their own or part
    of a train row)."""
    return sorted((row for row in run.rows if isinstance(row.get(CODE_METRIC), (int, float))),
                  key=lambda row: row["step"])


def plot_sweep(runs: List[Run], out: str) -> str:
    with_code = any(code_rows(run) for run in runs)
    fig, axes = plt.subplots(1, 3 if with_code else 2, figsize=(16.5 if with_code else 11, 4.2))
    loss_ax, cost_ax = axes[0], axes[1]
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
        code = code_rows(run) if with_code else []
        if code:
            axes[2].plot([r["step"] for r in code], [r[CODE_METRIC] for r in code], "o-",
                         color=line.get_color(), label=label(run))
    loss_ax.set(xlabel=runs[0].x_label, ylabel="loss (dashed: valid)", title="loss")
    loss_ax.legend()
    cost_ax.set(xlabel="offset cost  mean ||h_{r-1,i} - h_{r-1,i-1}||",
                ylabel="output shift  KL(p_r || p_{r-1})", title="gain vs cost per loop (labels: r)")
    if cost_ax.lines:
        cost_ax.legend()
    if with_code:
        axes[2].set(xlabel="step", ylabel="nats per solution token",
                    title="HumanEval canonical-solution NLL")
        axes[2].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def table(runs: List[Run]) -> str:
    lines = [f"{'run':<14} {'final loss':>10} {'valid loss':>10} {'code nll':>9} {'pass@1':>7}  "
             "loop: offset cost / output shift"]
    for run in runs:
        loops = "  ".join(f"{loop}: {_fmt(row.get('offset_cost'))} / {_fmt(row.get('output_shift'))}"
                          for loop, row in sorted(run.last_diagnostics().items()) if loop >= 2)
        code = code_rows(run)
        last = code[-1] if code else {}
        lines.append(f"{label(run):<14} {_fmt(run.final('loss')):>10} "
                     f"{_fmt(run.final('val_loss')):>10} {_fmt(last.get(CODE_METRIC)):>9} "
                     f"{_fmt(last.get(CODE_PASS)):>7}  {loops or '-'}   ({run.run_dir})")
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
    import sys

    from pretrain.errors import run_tool

    sys.exit(run_tool(main))
