"""The report's figures, one pair per size: validation loss against tokens and against training
FLOPs (one line per R x arm: the mean over seeds, a band from the seeds' min to max), and the
final effective rank per loop (one line per R x arm, bars from min to max over seeds). Each PNG is
written whole: to a temp file beside it, then renamed."""

from __future__ import annotations

import os
import re
from typing import List

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator, NullFormatter  # noqa: E402

from scripts.study.cells import BASELINE, Cell  # noqa: E402
from scripts.study.stats import summarize  # noqa: E402
from scripts.study.tables import at_budget  # noqa: E402


def _label(loops: int, arm: str) -> str:
    return "R=1" if arm == BASELINE else f"R={loops} {arm}"


# One line style per arm, so that an arm reads across R at a glance.
STYLE = {BASELINE: "o-", "clp": "o-", "noclp": "s--", "neutral": "^:"}


def _band(cells: List[Cell], axis: int):
    """x of the first seed's evaluations and mean/min/max over seeds there (log-x interpolated)."""
    xs = [p[axis] for p in cells[0].val_curve]
    stats = [summarize([at_budget(c, axis, x) for c in cells]) for x in xs]
    kept = [(x, s) for x, s in zip(xs, stats) if s["n"] == len(cells)]
    return ([x for x, _ in kept], [s["mean"] for _, s in kept], [s["min"] for _, s in kept],
            [s["max"] for _, s in kept])


def _save(fig, path: str) -> str:
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp.png")
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)
    return os.path.basename(path)


def safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _by_line(cells: List[Cell]):
    lines = {}
    for cell in cells:
        if cell.ok and cell.val_curve:
            lines.setdefault((cell.loops, cell.arm), []).append(cell)
    return sorted(lines.items())


def validation(cells: List[Cell], size: str, budget: dict, out_dir: str) -> str:
    """`budget`: the size's {tokens, flops} of the compute-fair tables (tables.budgets), marked."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    for ax, value in zip(axes, (budget.get("tokens"), budget.get("flops"))):
        if value:
            ax.axvline(value, color="grey", linewidth=0.8, linestyle="--")
    for (loops, arm), group in _by_line([c for c in cells if c.size == size]):
        for ax, axis in zip(axes, (0, 1)):
            x, mean, low, high = _band(group, axis)
            line, = ax.plot(x, mean, STYLE.get(arm, "o-"), markersize=3,
                            label=f"{_label(loops, arm)} (n={len(group)})")
            ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2)
    for ax, what in zip(axes, ("tokens", "training FLOPs")):
        ax.set(xscale="log", xlabel=what, ylabel="validation loss",
               title=f"{size}: vs {what} (mean, band: min-max over seeds; dashed: budget)")
        ax.xaxis.set_minor_formatter(NullFormatter())  # the minor labels of a log axis overlap
        if ax.lines:
            ax.legend(fontsize="small")
    fig.tight_layout()
    return _save(fig, os.path.join(out_dir, f"val_loss_{safe(size)}.png"))


def effective_rank(groups: List[dict], size: str, out_dir: str) -> str:
    fig, ax = plt.subplots(figsize=(6.5, 4.4))
    for g in (g for g in groups if g["size"] == size):
        loops = sorted(loop for loop, m in g["diagnostics"].items() if m["effective_rank"]["n"])
        if not loops:
            continue
        ranks = [g["diagnostics"][loop]["effective_rank"] for loop in loops]
        mean = [s["mean"] for s in ranks]
        errors = [[m - s["min"] for m, s in zip(mean, ranks)],
                  [s["max"] - m for m, s in zip(mean, ranks)]]
        ax.errorbar(loops, mean, yerr=errors, fmt=STYLE.get(g["arm"], "o-"), capsize=3,
                    label=f"{_label(g['loops'], g['arm'])} (n={g['n_ok']})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="loop r", ylabel="effective rank (final)",
           title=f"{size}: effective rank per loop (bars: min-max over seeds)")
    if ax.lines:
        ax.legend(fontsize="small")
    fig.tight_layout()
    return _save(fig, os.path.join(out_dir, f"effective_rank_{safe(size)}.png"))
