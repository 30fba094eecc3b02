""""What this grid says": the paragraph at the top of the report, generated from the answers
(answers.py, stability.py, mismatch.py) and nothing else, so that it can never say more than they
do. Each question gets one sentence: what is resolved, by name, and how many comparisons are "not
resolved at this scale"."""

from __future__ import annotations

from typing import Dict, List

from scripts.study.mismatch import resolved_rs

SHORT = {"val_loss": "at equal tokens", "val_at_equal_flops": "at equal FLOPs",
         "humaneval_nll": "by HumanEval NLL"}


def _seeds(groups: List[Dict]) -> str:
    counts = [g["n_ok"] for g in groups]
    if not counts:
        return "No cell finished: nothing below is resolved."
    low, high = min(counts), max(counts)
    span = f"{low}" if low == high else f"{low} to {high}"
    if high < 2:
        return (f"Every size x R x arm has {span} finished seed: with no seed spread to compare "
                f"against, no difference below can be resolved.")
    return f"Finished seeds per size x R x arm: {span}."


def _best(records: List[Dict]) -> List[str]:
    resolved, total = [], 0
    for rec in records:
        by_r: Dict[int, List[str]] = {}
        for metric, best in rec["best_r"].items():
            total += 1
            if best.get("resolved"):
                by_r.setdefault(best["best"], []).append(SHORT[metric])
        resolved += [f"{rec['size']}, {rec['arm']}: R={r} is the best R beyond the seed spread "
                     f"{' and '.join(metrics)}." for r, metrics in sorted(by_r.items())]
    count = sum(1 for rec in records for b in rec["best_r"].values() if b.get("resolved"))
    tail = (f"Not resolved at this scale in {total - count} of {total} size x arm x "
            f"metric comparisons" + (" (all of them)." if not count else "."))
    return resolved + [tail]


def _named(items: List[tuple], answer: str) -> List[str]:
    return [label for label, a in items if a == answer]


def _tally(items: List[tuple], phrases, counted: str) -> List[str]:
    """'<words> for <the items with that answer>' per (answer, words) that any item has, then how
    many of the items are not resolved."""
    parts = [f"{words} for {', '.join(_named(items, answer))}" for answer, words in phrases
             if _named(items, answer)]
    unresolved = len(_named(items, "not resolved"))
    return parts + [f"is not resolved at this scale in {unresolved} of {len(items)} {counted}"]


def _moves(records: List[Dict]) -> str:
    items = [(f"{rec['size']} {rec['arm']} {SHORT[m]}", moved["answer"])
             for rec in records for m, moved in rec.get("optimum_moves", {}).items()]
    if not items:
        return "Removing CLP: no arm without CLP next to a clp arm, not answered."
    parts = _tally(items, (("yes", "moves the optimum past two loops beyond the seed spread"),
                           ("no", "keeps the optimum at two loops or fewer beyond the seed spread"),
                           ("no move", "cannot move it: CLP's own optimum is already past two "
                                       "loops")), "comparisons")
    return "Removing CLP " + "; ".join(parts) + "."


def _flat(records: List[Dict]) -> str:
    items = []
    for rec in records:
        cost = rec["offset_cost"]
        items += [(f"{rec['size']} {rec['arm']} R={r}", v["answer"])
                  for r, v in cost["across_loops"].items()]
        items.append((f"{rec['size']} {rec['arm']} across R", cost["across_r"]["answer"]))
    flat = _named(items, "flat within the seed spread")
    steep = _named(items, "not flat")
    parts = ([f"flat within the seed spread for {', '.join(flat)}"] if flat else []) + (
        [f"not flat beyond the seed spread for {', '.join(steep)}"] if steep else [])
    unresolved = len(items) - len(flat) - len(steep)
    parts.append(f"not resolved at this scale in {unresolved} of {len(items)} comparisons")
    return "Offset cost across loops r >= 2 and across R: " + "; ".join(parts) + "."


def _early(records: List[Dict]) -> str:
    yes = [f"{rec['size']} {rec['arm']}" for rec in records if rec["early_rank"]["answer"] == "yes"]
    lead = (f"predicts the final ranking of R at this scale for {', '.join(yes)}; " if yes else "")
    return (f"The effective rank at ~T/10 {lead}not resolved at this scale in "
            f"{len(records) - len(yes)} of {len(records)} size x arm groups.")


def _mismatch(records: List[Dict]) -> str:
    if not records:
        return "No size has both a clp and a neutral arm: not answered."
    label = {"val_loss": "validation loss", "humaneval_nll": "HumanEval NLL"}
    items = [(f"{rec['size']} {label[rec['metric']]}", rec["answer"]) for rec in records]
    parts = []
    for sign, words in ((1, "is positive"), (-1, "is negative (CLP's loss lower)")):
        found = []
        for rec in records:
            rs = resolved_rs(rec["per_r"], sign)
            if rs:
                found.append(f"{rec['size']} {label[rec['metric']]} at R={', '.join(map(str, rs))}")
        if found or sign > 0:
            parts.append(f"{words} beyond the seed spread for {'; '.join(found)}" if found else
                         f"{words} beyond the seed spread at no R")
    parts += _tally(items, (("fixed within the spread", "is the same at every R within the "
                                                        "spread (consistent with a fixed cost)"),
                            ("not fixed", "differs between Rs beyond the spread (not a fixed "
                                          "cost)"),
                            ("CLP better at every R", "is negative at every R beyond the spread "
                                                      "(no mismatch cost)")),
                    "size x metric answers")
    return "The gap of CLP over the neutralized arm, paired by seed, " + "; ".join(parts) + "."


def paragraph(groups: List[Dict], records: List[Dict], stability: Dict,
              mismatch: List[Dict]) -> List[str]:
    """One bullet per question, in the order of the answers."""
    if records:
        best = _best(records)
        bullets = [("Seeds", _seeds(groups)), ("Best R", " ".join(best)),
                   ("Removing CLP", _moves(records)), ("Offset cost", _flat(records)),
                   ("Early effective rank", _early(records))]
    else:
        bullets = [("Cells", "No run folder could be read as a cell: no question is answered "
                             "(the cells and why are listed below).")]
    bullets.append(("Ranking stability", f"{stability['verdict'][0].upper()}"
                                         f"{stability['verdict'][1:]}."))
    if records:
        bullets.append(("Mismatch cost", _mismatch(mismatch)))
    return (["## What this grid says", "",
             "Generated from the answers below (each sentence is one of them, counted); "
             "'resolved' means beyond the seed spread by the rule in the method.", ""]
            + [f"- **{name}.** {text}" for name, text in bullets] + [""])
