"""The cells summarised over seeds: one group per size x R x arm, the budgets of the compute-fair
comparison, and the grid the cells imply (so that a missing cell is listed, not silently absent).
Only `ok` cells enter a mean; every group keeps how many cells it found.
"""

from __future__ import annotations

import math
from typing import Dict, List, Tuple

from scripts.study.cells import ARMS, BASELINE, Cell
from scripts.study.stats import finite, interpolate, summarize

DIAGNOSTICS = ("output_shift", "offset_cost", "effective_rank")
FINALS = ("val_loss", "humaneval_nll", "humaneval_pass@1")


def sizes(cells: List[Cell]) -> List[str]:
    """The sizes found, smallest first (non-embedding parameters, then name)."""
    params = {c.size: c.parameters.get("non_embedding") or 0 for c in cells if c.size is not None}
    return sorted(params, key=lambda size: (params[size], size))


def arms(cells: List[Cell]) -> List[str]:
    """The arms with R > 1 found anywhere, in the study's order."""
    found = {c.arm for c in cells if c.arm is not None}
    return [arm for arm in ARMS if arm in found]


def expected_grid(cells: List[Cell]) -> List[Tuple]:
    """sizes x Rs x arms x seeds found anywhere (R=1 once per size and seed, arm "R1")."""
    known = [c for c in cells if c.size is not None]
    loops = sorted({c.loops for c in known})
    seeds = sorted({c.seed for c in known})
    grid = []
    for size in sizes(known):
        for seed in seeds:
            for r in loops:
                for arm in ([BASELINE] if r == 1 else arms(known)):
                    grid.append((size, r, arm, seed))
    return grid


def missing(cells: List[Cell]) -> List[Tuple]:
    present = {c.key for c in cells if c.size is not None}
    return [key for key in expected_grid(cells) if key not in present]


def budgets(cells: List[Cell]) -> Dict[str, Dict[str, float]]:
    """Per size, the largest budget every finished cell reached: the least tokens and the least
    training FLOPs at their last evaluation (the R=1 run's FLOPs when every run saw the same
    tokens)."""
    out = {}
    for size in sizes(cells):
        ends = [c.val_curve[-1] for c in cells if c.size == size and c.ok and c.val_curve]
        tokens = [t for t, _, _ in ends]
        flops = [f for _, f, _ in ends if finite(f)]
        out[size] = {"tokens": min(tokens) if tokens else None,
                     "flops": min(flops) if flops and len(flops) == len(ends) else None}
    return out


def at_budget(cell: Cell, axis: int, budget) -> float:
    """The cell's validation loss interpolated at `budget` on axis 0 (tokens) or 1 (FLOPs)."""
    if budget is None:
        return math.nan
    value = interpolate([p[axis] for p in cell.val_curve], [p[2] for p in cell.val_curve], budget)
    return math.nan if value is None else value


def _diagnostics(cells: List[Cell], which: str) -> Dict[int, Dict[str, Dict]]:
    loops = sorted({loop for c in cells for loop in getattr(c, which)})
    return {loop: {m: summarize([getattr(c, which).get(loop, {}).get(m) for c in cells])
                   for m in DIAGNOSTICS} for loop in loops}


def group(cells_in_group: List[Cell], budget: Dict) -> Dict:
    ok = [c for c in cells_in_group if c.ok]
    first = cells_in_group[0]
    out = {"size": first.size, "loops": first.loops, "arm": first.arm,
           "found": len(cells_in_group), "n_ok": len(ok), "seeds": sorted(c.seed for c in ok)}
    for key in FINALS:
        out[key] = summarize([c.final.get(key) for c in ok])
    out["val_at_equal_tokens"] = summarize([at_budget(c, 0, budget["tokens"]) for c in ok])
    out["val_at_equal_flops"] = summarize([at_budget(c, 1, budget["flops"]) for c in ok])
    # the last two evaluations of each finished seed: stability.py ranks R at both
    out["val_last_two"] = [summarize([c.val_curve[-k][2] for c in ok if len(c.val_curve) >= 2])
                           for k in (2, 1)]
    out["tokens_last_two"] = [sorted({c.val_curve[-k][0] for c in ok if len(c.val_curve) >= 2})
                              for k in (2, 1)]
    out["diagnostics"] = _diagnostics(ok, "final_diagnostics")
    out["early_effective_rank"] = summarize(
        [c.early_diagnostics.get(c.loops, {}).get("effective_rank") for c in ok])
    out["early_steps"] = sorted({c.early_step for c in ok if c.early_step is not None})
    out["offset_cost_over_loops"] = summarize([_mean_offset_cost(c) for c in ok])
    # (early effective rank of the last loop, final validation loss) per finished seed: answers.py
    out["early_rank_vs_final"] = [
        (c.early_diagnostics.get(c.loops, {}).get("effective_rank"), c.final.get("val_loss"))
        for c in ok]
    return out


def _mean_offset_cost(cell: Cell) -> float:
    """The cell's final offset cost averaged over its loops r >= 2 (NaN for R = 1)."""
    values = [row.get("offset_cost") for loop, row in cell.final_diagnostics.items() if loop >= 2]
    values = [v for v in values if finite(v)]
    return sum(values) / len(values) if values else math.nan


def groups(cells: List[Cell], table: Dict[str, Dict[str, float]]) -> List[Dict]:
    """One summary per size x R x arm that has a cell, in size, R, arm order; `table`: the
    budgets of `cells` (budgets())."""
    by_key: Dict[Tuple, List[Cell]] = {}
    for cell in cells:
        if cell.size is not None and cell.status != "duplicate":
            by_key.setdefault((cell.size, cell.loops, cell.arm), []).append(cell)
    order = {arm: i for i, arm in enumerate((BASELINE,) + ARMS)}
    return [group(by_key[k], table[k[0]])
            for k in sorted(by_key, key=lambda k: (k[0], k[1], order.get(k[2], 9)))]


def series(all_groups: List[Dict], size: str, arm: str) -> Dict[int, Dict]:
    """{R: group} of one size and arm, the shared R=1 baseline included."""
    return {g["loops"]: g for g in all_groups
            if g["size"] == size and g["arm"] in (arm, BASELINE)}
