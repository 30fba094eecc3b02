"""The study's four questions answered from the groups (tables.py), each with its evidence and
whether it exceeds the seed spread (stats.RULE). An answer never claims more than the rule allows:
"not resolved at this scale" is an answer.

    best_r             (a) the best R per size and arm, and which other R it beats beyond the spread
    optimum_moves      (b) whether removing CLP (noclp, neutral) moves the optimum past two loops
    offset_cost_flat   (c) whether the offset cost is flat across loops r >= 2 and across R
    early_rank         (d) whether the effective rank at ~T/10 predicts the final ranking of R
    ranking_stability  whether the ranking of R changed between the last two evaluations
                       (stability.py)

The paired question (f), the mismatch term on its own (CLP minus the neutralized arm, seed by
seed), needs the cells rather than the groups: mismatch.py.
"""

from __future__ import annotations

from typing import Dict, List

from scripts.study.stability import ranking_stability
from scripts.study.stats import compare, finite, spearman

METRICS = {"val_loss": "final validation loss (equal tokens: every cell's last evaluation)",
           "val_at_equal_flops": "validation loss at equal training FLOPs (interpolated)",
           "humaneval_nll": "HumanEval solution NLL (final)"}
ALPHA = 0.05


def best_r(series: Dict[int, Dict], metric: str) -> Dict:
    """The R with the lowest mean `metric`, and the Rs the spread cannot tell from it (`tied`)."""
    ranked = sorted((g[metric]["mean"], r) for r, g in series.items() if g[metric]["n"])
    if not ranked:
        return {"metric": metric, "best": None, "tied": [], "comparisons": {},
                "verdict": "no finished cell"}
    best = ranked[0][1]
    absent = sorted(r for r, g in series.items() if not g[metric]["n"])
    comparisons = {r: compare(series[r][metric], series[best][metric]) for _, r in ranked[1:]}
    tied = sorted([best] + [r for r, c in comparisons.items() if not c["resolved"]])
    if len(ranked) == 1:
        verdict = f"only R={best} has a finished cell: nothing to compare"
    elif tied == [best]:
        verdict = f"R={best}, beyond the seed spread against every other R"
    else:
        others = ", ".join(f"R={r}" for r in tied if r != best)
        verdict = (f"not resolved at this scale: R={best} has the lowest mean, but {others} "
                   f"cannot be told from it within the seed spread")
    if absent:  # never dropped in silence: a missing R could have been the best
        verdict += (f" (no value for {_rs(absent)}: no finished cell, or its curve does not reach "
                    f"the budget; the best is among the others only)")
    return {"metric": metric, "best": best, "tied": tied, "absent": absent,
            "resolved": tied == [best]
            and len(ranked) > 1, "ranking": [r for _, r in ranked], "comparisons": comparisons,
            "verdict": verdict}


def optimum_moves(clp: Dict, arm: Dict, arm_name: str) -> Dict:
    """(b) from best_r of the clp arm and of `arm_name` on the same metric."""
    if arm["best"] is None or clp["best"] is None:
        return {"answer": "not resolved", "verdict": "a series has no finished cell"}
    arm_set, clp_set = arm["tied"], clp["tied"]
    where = f"{arm_name}: optimum in {{{_rs(arm_set)}}}; clp: optimum in {{{_rs(clp_set)}}}"
    if min(clp_set) >= 3:
        return {"answer": "no move", "verdict": f"CLP's own optimum is already past two loops "
                                                f"beyond the spread ({where})"}
    if min(arm_set) >= 3 and max(clp_set) <= 2:
        return {"answer": "yes", "verdict": f"yes: without CLP the optimum moves past two loops, "
                                            f"beyond the seed spread ({where})"}
    if max(arm_set) <= 2 and max(arm["ranking"]) >= 3:
        return {"answer": "no", "verdict": f"no: without CLP the optimum stays at two loops or "
                                           f"fewer, beyond the seed spread ({where})"}
    return {"answer": "not resolved", "verdict": f"not resolved at this scale ({where})"}


def _rs(rs: List[int]) -> str:
    return ", ".join(f"R={r}" for r in rs)


def _pairwise(summaries: Dict[int, Dict], label: str) -> Dict:
    """Flat = no two entries differ beyond the spread; not flat = some pair does."""
    keys = [k for k in sorted(summaries) if summaries[k]["n"]]
    if len(keys) < 2:
        return {"answer": "not resolved", "verdict": f"fewer than two {label}s to compare"}
    means = [summaries[k]["mean"] for k in keys]
    level = sum(means) / len(means)
    relative = (max(means) - min(means)) / abs(level) if level else None
    differ = [(a, b) for i, a in enumerate(keys) for b in keys[i + 1:]
              if compare(summaries[a], summaries[b])["resolved"]]
    spread = "" if relative is None else f"; range of means {100 * relative:.1f}% of their mean"
    values = ", ".join(f"{label} {k}: {summaries[k]['mean']:.4g}" for k in keys)
    if differ:
        pairs = ", ".join(f"{a} vs {b}" for a, b in differ)
        return {"answer": "not flat", "relative_range": relative, "differ": differ,
                "verdict": f"not flat: {label}s {pairs} differ beyond the seed spread ({values}"
                           f"{spread})"}
    if min(summaries[k]["n"] for k in keys) < 2:
        return {"answer": "not resolved", "relative_range": relative,
                "verdict": f"not resolved: fewer than 2 seeds somewhere ({values}{spread})"}
    return {"answer": "flat within the seed spread", "relative_range": relative,
            "verdict": f"flat within the seed spread: no two {label}s differ beyond it ({values}"
                       f"{spread}); not a proof of flatness"}


def offset_cost_flat(series: Dict[int, Dict]) -> Dict:
    """(c) per R >= 3: across its loops r >= 2; and across R >= 2: the cost averaged over loops."""
    across_loops = {}
    for r, g in sorted(series.items()):
        if r >= 3:
            loops = {loop: m["offset_cost"] for loop, m in g["diagnostics"].items() if loop >= 2}
            across_loops[r] = _pairwise(loops, "loop")
    across_r = _pairwise({r: g["offset_cost_over_loops"] for r, g in series.items() if r >= 2}, "R")
    return {"across_loops": across_loops, "across_r": across_r}


def early_rank(series: Dict[int, Dict]) -> Dict:
    """(d) Spearman between the last loop's effective rank at ~T/10 and the final validation loss:
    over cells (each finished seed of each R) and over R (means over seeds)."""
    pairs = [(x, y) for g in series.values() for x, y in g["early_rank_vs_final"]
             if finite(x) and finite(y)]
    cells = spearman([x for x, _ in pairs], [y for _, y in pairs])
    means = [(g["early_effective_rank"]["mean"], g["val_loss"]["mean"]) for g in series.values()]
    means = [(x, y) for x, y in means if finite(x) and finite(y)]
    by_r = spearman([x for x, _ in means], [y for _, y in means])
    steps = sorted({s for g in series.values() for s in g["early_steps"]})
    note = (f"over R (n = {by_r['n']} R values) the smallest possible two-sided p is "
            f"{_smallest_p(by_r['n'])}, so the R-level rho alone cannot settle it"
            if by_r["n"] < 5 else "")
    if cells["rho"] is None:
        why = (f"too few cells with both numbers (n = {cells['n']})" if cells["n"] < 3 else
               f"the early rank or the final loss is the same in all {cells['n']} cells")
        verdict, answer = f"not resolved: {why}", "not resolved"
    elif cells["p"] < ALPHA and by_r["rho"] is not None and by_r["rho"] * cells["rho"] > 0:
        direction = "higher" if cells["rho"] < 0 else "lower"
        verdict, answer = (f"yes at this scale: a {direction} early effective rank goes with a "
                           f"lower final loss (cells: rho = {cells['rho']:.2f}, p = "
                           f"{cells['p']:.3g}, n = {cells['n']}; R means: rho = "
                           f"{by_r['rho']:.2f}, n = {by_r['n']})"), "yes"
    else:
        verdict, answer = (f"not resolved at this scale (cells: rho = {cells['rho']:.2f}, p = "
                           f"{cells['p']:.3g}, n = {cells['n']})"), "not resolved"
    return {"answer": answer, "cells": cells, "by_r": by_r, "steps": steps, "note": note,
            "verdict": verdict}


def _smallest_p(n: int) -> str:
    import math

    return "-" if n < 2 else f"{2 / math.factorial(n):.3g}"


def answer_all(all_groups: List[Dict], sizes: List[str], arms: List[str], series_of) -> List[Dict]:
    """One record per size and arm: (a), (c), (d); (b) per size for the arms without CLP."""
    out = []
    for size in sizes:
        best = {arm: {m: best_r(series_of(size, arm), m) for m in METRICS} for arm in arms}
        for arm in arms:
            s = series_of(size, arm)
            record = {"size": size, "arm": arm, "best_r": best[arm],
                      "offset_cost": offset_cost_flat(s), "early_rank": early_rank(s),
                      "ranking_stability": ranking_stability(s)}
            if arm != "clp" and "clp" in best:
                record["optimum_moves"] = {m: optimum_moves(best["clp"][m], best[arm][m], arm)
                                           for m in ("val_loss", "val_at_equal_flops")}
            out.append(record)
    return out
