"""(f) The mismatch term on its own: the CLP arm's loss minus the neutralized arm's, paired by seed
index, per size and R.

The two arms have the same parameters, initialization, data order and FLOPs per token; they differ
only in where loop r reads the previous loop's hidden state (one position back with CLP, the same
position with clp_offset=0: docs/spec.md, "Ablations"). Their per-seed gap is therefore the
training-time cost of the offset's mismatch, and at one R the equal-token and the equal-FLOP
comparison are the same comparison. The fixed-cost account (LoopCoder-v2) predicts the gap
positive and about the same at every R >= 2; this answers both halves under stats.PAIRED_RULE:
is the gap positive beyond the seed spread at each R, and do the gaps of any two Rs differ beyond
it (paired again: gap at the larger R minus gap at the smaller, seed by seed). The answers: "not
fixed" (two Rs' gaps differ), "fixed within the spread" (positive at every R, no two differ),
"CLP better at every R" (negative at every R, no two differ), else "not resolved".
"""

from __future__ import annotations

from typing import Dict, List

from scripts.study.cells import Cell
from scripts.study.stats import MIN_SEEDS, finite, paired

METRICS = {"val_loss": "final validation loss", "humaneval_nll": "HumanEval solution NLL (final)"}
CLP, NEUTRAL = "clp", "neutral"


def gaps(cells: List[Cell], size: str, metric: str) -> Dict[int, Dict[int, float]]:
    """{R: {seed: clp - neutral}} over the seeds where both cells finished with a finite value."""
    value = {(c.loops, c.arm, c.seed): c.final.get(metric) for c in cells
             if c.size == size and c.ok and c.arm in (CLP, NEUTRAL)}
    out: Dict[int, Dict[int, float]] = {}
    for (loops, arm, seed), mine in sorted(value.items()):
        other = value.get((loops, NEUTRAL, seed))
        if arm == CLP and finite(mine) and finite(other):
            out.setdefault(loops, {})[seed] = mine - other
    return out


def mismatch_cost(cells: List[Cell], size: str, metric: str) -> Dict:
    """The paired gap per R, every pair of Rs compared, and the answer with its evidence."""
    by_r = gaps(cells, size, metric)
    rs = sorted({c.loops for c in cells if c.size == size and c.arm in (CLP, NEUTRAL)})
    per_r = {r: {**paired(list(by_r.get(r, {}).values())), "seeds": sorted(by_r.get(r, {}))}
             for r in rs}
    between = []
    for i, a in enumerate(rs):
        for b in rs[i + 1:]:
            common = sorted(set(by_r.get(a, {})) & set(by_r.get(b, {})))
            between.append({"a": a, "b": b, "seeds": common,
                            **paired([by_r[b][s] - by_r[a][s] for s in common])})
    answer, verdict = _answer(per_r, between)
    return {"size": size, "metric": metric, "per_r": per_r, "between_r": between,
            "answer": answer, "verdict": verdict}


def _answer(per_r: Dict[int, Dict], between: List[Dict]):
    values = "; ".join(f"R={r}: {gap_words(g)}" for r, g in per_r.items()) or "no R"
    if not any(g["n"] for g in per_r.values()):
        return "not resolved", ("not resolved: no seed index has both a clp and a neutral cell "
                                "that finished")
    differ = [d for d in between if d["resolved"]]
    if differ:
        moves = ", ".join(f"the gap at R={d['b']} is {abs(d['difference']):.3g} "
                          f"{'larger' if d['difference'] > 0 else 'smaller'} than at R={d['a']}"
                          for d in differ)
        return "not fixed", (f"not fixed: {moves}, beyond the seed spread (paired by seed); "
                             f"{values}")
    compared = between and all(d["n"] >= MIN_SEEDS for d in between)
    for sign, answer, words, caveat in (
            (1, "fixed within the spread", "consistent with a fixed cost: the gap is positive",
             "; not a proof that it is constant"),
            (-1, "CLP better at every R", "no mismatch cost: the gap is negative (CLP's loss "
                                          "lower)", "")):
        same = resolved_rs(per_r, sign)
        if len(per_r) >= 2 and len(same) == len(per_r) and compared:
            return answer, (f"{words} beyond the seed spread at every R and no two Rs' gaps "
                            f"differ beyond it ({values}){caveat}")
    return "not resolved", f"not resolved at this scale ({values})"


def resolved_rs(per_r: Dict[int, Dict], sign: int) -> List[int]:
    """The Rs whose gap is resolved with this sign (1: CLP's loss higher; -1: lower)."""
    return [r for r, g in per_r.items() if g["resolved"] and g["difference"] * sign > 0]


def gap_words(g: Dict) -> str:
    """One paired gap: its mean ± the std over seeds, and the rule's verdict in a few words."""
    if not g["n"]:
        return "no seed with both cells"
    head = f"{g['difference']:+.4g}"
    if g["t"] is None:
        return f"{head} (not beyond: {g['why']})"
    head += f" ± {g['std']:.2g}"
    if g["resolved"]:
        return f"{head} (beyond: one sign, t {g['t']:.2f} > {g['t_critical']:g}, n = {g['n']})"
    if not any(g["values"]):
        return f"{head} (not beyond: zero in every seed, n = {g['n']})"
    if not g["one_sign"]:
        return f"{head} (not beyond: the sign changes across seeds, t {g['t']:.2f}, n = {g['n']})"
    return f"{head} (not beyond: one sign, t {g['t']:.2f} <= {g['t_critical']:g}, n = {g['n']})"


def answer_all(cells: List[Cell], sizes: List[str]) -> List[Dict]:
    """One record per size and metric, for the sizes that have both a clp and a neutral arm."""
    return [mismatch_cost(cells, size, metric) for size in sizes for metric in METRICS
            if {CLP, NEUTRAL} <= {c.arm for c in cells if c.size == size}]
