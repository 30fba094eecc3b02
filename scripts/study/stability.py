"""Whether the runs are long enough for a stable ranking of R (the study's "enough tokens that the
ranking stops changing between the last two evaluations"): per size x arm, R=1 included as the
baseline like every answer, the ranking of R by mean validation loss over the finished seeds at
the second-to-last evaluation and at the last one, and whether it changed.

A changed ranking says the curves still cross: the final ranking could change again with more
tokens. An unchanged one is necessary, not sufficient, for a settled ranking (two evaluations are
little), and it is a ranking of means: whether those differences exceed the seed spread is (a)'s
question, not this one's.
"""

from __future__ import annotations

from typing import Dict, List


def _ranking(series: Dict[int, Dict], which: int) -> List[int]:
    """R ordered by mean validation loss at evaluation `which` (0: second-to-last, 1: last)."""
    means = [(g["val_last_two"][which]["mean"], r) for r, g in series.items()
             if g["val_last_two"][which]["n"]]
    return [r for _, r in sorted(means)]


def ranking_stability(series: Dict[int, Dict]) -> Dict:
    """{previous, last (rankings of R), tokens (of each evaluation), changed, swapped (pairs of R
    whose order differs), answer, verdict} of one size x arm."""
    previous, last = _ranking(series, 0), _ranking(series, 1)
    tokens = [sorted({t for g in series.values() for t in g["tokens_last_two"][k]}) for k in (0, 1)]
    absent = sorted(r for r in series if r not in last)
    if len(last) < 2:
        return {"previous": previous, "last": last, "tokens": tokens, "changed": None,
                "swapped": [], "absent": absent, "answer": "not resolved",
                "verdict": "fewer than two R with two evaluations: no ranking to compare"}
    position = {r: i for i, r in enumerate(previous)}
    swapped = [(a, b) for i, a in enumerate(last) for b in last[i + 1:]
               if a in position and b in position and position[a] > position[b]]
    changed = previous != last
    shown = f"{_order(previous)} -> {_order(last)}"
    if changed:
        pairs = ", ".join(f"R={a} passed R={b}" for a, b in swapped) or "an R entered or left"
        verdict = f"changed ({shown}: {pairs})"
    else:
        verdict = f"unchanged ({_order(last)})"
    if absent:
        verdict += f"; no two evaluations for {', '.join(f'R={r}' for r in absent)}"
    return {"previous": previous, "last": last, "tokens": tokens, "changed": changed,
            "swapped": swapped, "absent": absent,
            "answer": "changed" if changed else "unchanged", "verdict": verdict}


def _order(ranking: List[int]) -> str:
    return " < ".join(f"R={r}" for r in ranking) or "-"


def overall(records: List[Dict]) -> Dict:
    """The line at the top of the answers: in how many size x arm groups the ranking changed."""
    judged = [r["ranking_stability"] for r in records
              if r["ranking_stability"]["changed"] is not None]
    changed = sum(1 for s in judged if s["changed"])
    if not judged:
        return {"changed": 0, "groups": 0, "stable": None,
                "verdict": "no size x arm group has two R with two evaluations: ranking "
                           "stability not resolved"}
    enough = "long enough" if not changed else "not long enough"
    return {"changed": changed, "groups": len(judged), "stable": not changed,
            "verdict": f"the ranking of R changed between the last two evaluations in {changed} "
                       f"of {len(judged)} size x arm groups: the runs are {enough} for a stable "
                       f"ranking at this scale"}
