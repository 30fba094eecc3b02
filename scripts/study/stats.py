"""The statistics of the loop-count report: a summary over seeds, the rule that says whether a
difference exceeds the seed spread, interpolation on a validation curve, and Spearman's rank
correlation with its permutation p-value. Standard library only: the report runs without scipy.
"""

from __future__ import annotations

import itertools
import math
import random
from typing import Dict, List, Optional, Sequence

# The rule (stated in the report): two groups of seeds differ beyond the seed spread when each has
# at least MIN_SEEDS seeds, their min-max ranges do not overlap, and the difference of their means
# exceeds SPREAD_FACTOR times its standard error sqrt(s_a^2/n_a + s_b^2/n_b) (a Welch t above 2).
# Both conditions, because with 2-3 seeds either alone is weak: two groups drawn from one
# distribution have disjoint ranges with probability 1/3 (2 vs 2 seeds) or 1/10 (3 vs 3), and a
# standard deviation from 2-3 values is itself very uncertain.
MIN_SEEDS = 2
SPREAD_FACTOR = 2.0
RULE = (f"a difference exceeds the seed spread when both groups have >= {MIN_SEEDS} seeds, their "
        f"min-max ranges over seeds do not overlap, and the difference of means is more than "
        f"{SPREAD_FACTOR:g} x its standard error sqrt(s_a^2/n_a + s_b^2/n_b) (Welch t > "
        f"{SPREAD_FACTOR:g}). With 2-3 seeds this is a weak test even so (disjoint ranges alone "
        f"happen by chance 1 time in 3 for 2 vs 2 seeds, 1 in 10 for 3 vs 3): a 'resolved' "
        f"difference here is evidence, not proof")


def finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def summarize(values: Sequence[Optional[float]]) -> Dict:
    """n, mean, std (sample, n-1; None below 2 values), min, max of the finite values."""
    xs = [float(v) for v in values if finite(v)]
    if not xs:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None, "values": []}
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None
    return {"n": len(xs), "mean": mean, "std": std, "min": min(xs), "max": max(xs), "values": xs}


def compare(a: Dict, b: Dict) -> Dict:
    """Whether summaries `a` and `b` differ beyond the seed spread (RULE): {difference (a - b),
    welch_t, ranges_overlap, resolved, why}."""
    out = {"difference": None, "welch_t": None, "ranges_overlap": None, "resolved": False}
    if not a["n"] or not b["n"]:
        return {**out, "why": "a group has no finished seed"}
    out["difference"] = a["mean"] - b["mean"]
    if a["n"] < MIN_SEEDS or b["n"] < MIN_SEEDS:
        return {**out, "why": f"fewer than {MIN_SEEDS} seeds (n = {a['n']} and {b['n']}): no "
                              f"spread to compare against"}
    out["ranges_overlap"] = a["min"] <= b["max"] and b["min"] <= a["max"]
    error = math.sqrt(a["std"] ** 2 / a["n"] + b["std"] ** 2 / b["n"])
    out["welch_t"] = abs(out["difference"]) / error if error > 0 else math.inf
    out["resolved"] = not out["ranges_overlap"] and out["welch_t"] > SPREAD_FACTOR
    if out["resolved"]:
        why = "ranges disjoint and Welch t > %g" % SPREAD_FACTOR
    elif out["ranges_overlap"]:
        why = "the seed ranges overlap"
    else:
        why = "ranges disjoint but Welch t <= %g" % SPREAD_FACTOR
    return {**out, "why": why}


# Two-sided 5% critical values of Student's t for df = 1..30 (standard tables); above 30 the
# df = 30 value, a little stricter than the true one.
T_CRITICAL_5 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
                2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
                2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
PAIRED_RULE = (f"paired by seed index (the two cells of a pair share initialization, data order "
               f"and held-out batch): a mean per-seed difference exceeds the seed spread when "
               f">= {MIN_SEEDS} seeds have both cells, every per-seed difference has the same "
               f"sign, and a paired t-test rejects zero at 5% two-sided (t = |mean| / (s/sqrt(n)) "
               f"above Student's critical value for n-1 degrees of freedom: 4.30 for 3 seeds, 12.7 "
               f"for 2; with 2-3 seeds that t implies one sign, which adds to the test from 4 "
               f"seeds on). A stricter bar than 'Welch t > {SPREAD_FACTOR:g}' on purpose: with 3 "
               f"seeds, t > {SPREAD_FACTOR:g} and one sign happen by chance about 1 time in 5 when "
               f"there is no gap (simulated), this rule about 1 time in 20. Each comparison is "
               f"tested on its own, with no correction for their number: among 20 comparisons of "
               f"gaps that do not exist, about one is expected to pass. Evidence, not proof")


def t_critical(n: int) -> float:
    """Student's two-sided 5% critical t for n paired values (n - 1 degrees of freedom)."""
    return T_CRITICAL_5[min(n - 1, len(T_CRITICAL_5)) - 1]


def paired(differences: Sequence[Optional[float]]) -> Dict:
    """Whether per-seed differences (a_s - b_s for one seed index s) differ from zero beyond the
    seed spread (PAIRED_RULE): {difference (their mean), t, t_critical, one_sign, resolved, why,
    n, std, values}."""
    s = summarize(differences)
    out = {"difference": s["mean"], "t": None, "t_critical": None, "one_sign": None,
           "resolved": False, "n": s["n"], "std": s["std"], "values": s["values"]}
    if s["n"] < MIN_SEEDS:
        return {**out, "why": f"fewer than {MIN_SEEDS} seeds with both cells (n = {s['n']})"}
    out["one_sign"] = s["min"] > 0 or s["max"] < 0
    out["t_critical"] = t_critical(s["n"])
    error = s["std"] / math.sqrt(s["n"])
    out["t"] = abs(s["mean"]) / error if error > 0 else (math.inf if s["mean"] else 0.0)
    out["resolved"] = out["one_sign"] and out["t"] > out["t_critical"]
    if out["resolved"]:
        why = f"one sign in every seed, t > {out['t_critical']:g}"
    elif not any(s["values"]):
        why = "zero in every seed"
    elif not out["one_sign"]:
        why = "the per-seed differences change sign"
    else:
        why = f"one sign in every seed but t <= {out['t_critical']:g}"
    return {**out, "why": why}


def interpolate(xs: Sequence[float], ys: Sequence[float], x: float) -> Optional[float]:
    """y at `x` on the curve (xs ascending, > 0), linear in log x between the two neighbouring
    points; None outside [xs[0], xs[-1]] (no extrapolation).

    Why log x: a validation curve falls roughly as a power of tokens or FLOPs, so between two
    evaluations it is closer to a straight line in log x than in x; plain linear interpolation of
    a convex falling curve overstates the loss between points, most for the sparse early
    evaluations where an R=4 run meets the R=1 run's whole FLOP budget."""
    points = [(float(a), float(b)) for a, b in zip(xs, ys) if finite(a) and a > 0 and finite(b)]
    if not points or not finite(x) or x <= 0 or x < points[0][0] or x > points[-1][0]:
        return None
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            if x1 == x0:
                return y1
            t = (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
            return y0 + t * (y1 - y0)
    return points[-1][1]  # x is the only point's x


def ranks(values: Sequence[float]) -> List[float]:
    """1-based ranks, ties sharing their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def _pearson(x: Sequence[float], y: Sequence[float]) -> Optional[float]:
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else None


EXACT_UP_TO = 8            # n! permutations enumerated up to n = 8 (40,320)
SAMPLED_PERMUTATIONS = 20000


def spearman(x: Sequence[float], y: Sequence[float]) -> Dict:
    """Spearman's rho (Pearson on average ranks) with its two-sided permutation p-value: exact up
    to EXACT_UP_TO points, else from SAMPLED_PERMUTATIONS permutations of a fixed seed (the
    report is the same every time it is written). {n, rho, p}; rho None when n < 3 or a side is
    constant."""
    n = len(x)
    if n < 3:
        return {"n": n, "rho": None, "p": None}
    rx, ry = ranks(x), ranks(y)
    rho = _pearson(rx, ry)
    if rho is None:
        return {"n": n, "rho": None, "p": None}
    if n <= EXACT_UP_TO:
        shuffles = itertools.permutations(ry)
    else:
        rng = random.Random(0)
        shuffles = (rng.sample(ry, n) for _ in range(SAMPLED_PERMUTATIONS))
    count = total = 0
    for shuffled in shuffles:
        total += 1
        value = _pearson(rx, shuffled)
        count += value is not None and abs(value) >= abs(rho) - 1e-12
    return {"n": n, "rho": rho, "p": count / total}
