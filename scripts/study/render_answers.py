"""The report's answers as Markdown: the ranking-stability line first, then one compact table per
question (a row per size x arm, the verdict in words), with every pairwise comparison behind (a)
and every full verdict behind (c) kept in a collapsed <details> block (and in report.json)."""

from __future__ import annotations

from typing import Dict, List

from scripts.study.answers import METRICS
from scripts.study.mismatch import METRICS as MISMATCH_METRICS
from scripts.study.mismatch import gap_words
from scripts.study.render import table
from scripts.study.stats import PAIRED_RULE, SPREAD_FACTOR

SHORT = {"val_loss": "equal tokens", "val_at_equal_flops": "equal FLOPs",
         "humaneval_nll": "HumanEval NLL"}
TITLES = {"a": "(a) Best R per size and arm",
          "b": "(b) Does removing CLP move the optimum past two loops?",
          "c": "(c) Is the offset cost flat across loops?",
          "d": "(d) Does the effective rank at ~T/10 predict the final ranking of R?",
          "e": "(e) Is the ranking of R stable between the last two evaluations?",
          "f": "(f) The mismatch term itself: is CLP's cost over the neutralized arm fixed "
               "across R?"}


def diff(c: Dict) -> str:
    """One pairwise comparison: the difference of means and the rule's verdict on it."""
    if c["difference"] is None:
        return c["why"]
    t = "" if c["welch_t"] is None else f", Welch t {c['welch_t']:.2f}"
    word = "exceeds the seed spread" if c["resolved"] else "not beyond the seed spread"
    return f"+{c['difference']:.4g} ({word}: {c['why']}{t})"


def short_diff(c: Dict) -> str:
    """diff() for a table cell: the difference and the rule's verdict in a few words."""
    if c["difference"] is None:
        return c["why"]
    head = f"{c['difference']:+.4g}"
    if c["ranges_overlap"] is None:  # fewer than MIN_SEEDS seeds: the rule was not applied
        return f"{head} (not beyond: {c['why'].split(':')[0]})"
    t = f"Welch t {c['welch_t']:.2f}"
    if c["resolved"]:
        return f"{head} (beyond: ranges disjoint, {t})"
    if c["ranges_overlap"]:
        return f"{head} (not beyond: ranges overlap, {t})"
    return f"{head} (not beyond: ranges disjoint, {t} <= {SPREAD_FACTOR:g})"


def _rs(rs) -> str:
    return ", ".join(f"R={r}" for r in rs) or "-"


def _details(summary: str, lines: List[str]) -> List[str]:
    return ["<details>", f"<summary>{summary}</summary>", ""] + lines + ["", "</details>", ""]


def best_r(records: List[Dict]) -> List[str]:
    out = [f"### {TITLES['a']}", "",
           "Per metric: the R with the lowest mean, whether it beats every other R beyond the "
           "seed spread, the runner-up (second-lowest mean) with its gap and the rule's verdict, "
           "and the Rs the spread cannot tell from the best ('beyond': the difference exceeds "
           "the seed spread by the rule in the method).", ""]
    evidence = []
    for metric, title in METRICS.items():
        rows = []
        for rec in records:
            best = rec["best_r"][metric]
            if best["best"] is None:
                rows.append([rec["size"], rec["arm"], "-", best["verdict"], "-", "-", "-"])
                continue
            runner = best["ranking"][1] if len(best["ranking"]) > 1 else None
            resolved = "yes" if best["resolved"] else (
                "not resolved at this scale" if runner is not None else "nothing to compare")
            if best["absent"]:
                resolved += f" (no value for {_rs(best['absent'])})"
            rows.append([rec["size"], rec["arm"], f"R={best['best']}", resolved,
                         "-" if runner is None else f"R={runner}",
                         "-" if runner is None else short_diff(best["comparisons"][runner]),
                         _rs(r for r in best["tied"] if r != best["best"])])
            evidence.append(f"- {rec['size']}, {rec['arm']}, {title}: **{best['verdict']}**"
                            + "".join(f"; R={r} vs R={best['best']}: {diff(c)}"
                                      for r, c in best["comparisons"].items()))
        out += [f"**{title}**", ""]
        out += table(["size", "arm", "best R", "resolved?", "runner-up", "gap to the runner-up",
                      "not told from the best"], rows)
    return out + _details("Every pairwise comparison behind (a)", evidence)


def optimum_moves(records: List[Dict]) -> List[str]:
    out = [f"### {TITLES['b']}", "",
           "Optimum within the spread: the best R and every R the seed spread cannot tell from "
           "it; 'yes' needs the arm's set past two loops and CLP's at two or fewer.", ""]
    clp = {(r["size"]): r["best_r"] for r in records if r["arm"] == "clp"}
    rows = []
    for rec in records:
        for metric, moved in rec.get("optimum_moves", {}).items():
            own = rec["best_r"][metric]["tied"]
            theirs = clp.get(rec["size"], {}).get(metric, {}).get("tied", [])
            rows.append([rec["size"], f"{rec['arm']} vs clp", SHORT[metric],
                         f"**{moved['answer']}**", _rs(own), _rs(theirs)])
    if not rows:
        return out + ["No arm without CLP next to a clp arm: nothing to compare.", ""]
    return out + table(["size", "arms", "metric", "answer", "optimum within the spread (arm)",
                        "optimum within the spread (clp)"], rows)


def offset_cost(records: List[Dict]) -> List[str]:
    out = [f"### {TITLES['c']}", "",
           "Per R >= 3 across its loops r >= 2, and across R (the cost averaged over loops "
           "r >= 2): 'flat' only when no two differ beyond the seed spread; the range of the "
           "means relative to their mean in brackets.", ""]
    loops = sorted({r for rec in records for r in rec["offset_cost"]["across_loops"]})
    rows, verdicts = [], []
    for rec in records:
        cost = rec["offset_cost"]
        cells = [_flat(cost["across_loops"].get(r)) for r in loops] + [_flat(cost["across_r"])]
        rows.append([rec["size"], rec["arm"], *cells])
        verdicts += [f"- {rec['size']}, {rec['arm']}, R={r}, across loops r >= 2: {v['verdict']}"
                     for r, v in cost["across_loops"].items()]
        verdicts.append(f"- {rec['size']}, {rec['arm']}, across R: {cost['across_r']['verdict']}")
    out += table(["size", "arm", *[f"R={r}: across loops" for r in loops], "across R"], rows)
    return out + _details("Every verdict behind (c), with the means", verdicts)


def _flat(answer) -> str:
    if answer is None:
        return "-"
    relative = answer.get("relative_range")
    return answer["answer"] + ("" if relative is None else f" ({100 * relative:.1f}%)")


def early_rank(records: List[Dict]) -> List[str]:
    out = [f"### {TITLES['d']}", "",
           "Spearman's rho between the last loop's effective rank at ~T/10 and the final "
           "validation loss, over cells (every finished seed of every R; permutation p) and over "
           "the R means.", ""]
    rows, notes = [], []
    for rec in records:
        d = rec["early_rank"]
        cells, by_r = d["cells"], d["by_r"]
        rows.append([rec["size"], rec["arm"], ", ".join(str(s) for s in d["steps"]) or "-",
                     f"**{d['answer']}**", _rho(cells, with_p=True), _rho(by_r, with_p=False)])
        if d["note"] and d["note"] not in notes:
            notes.append(d["note"])
    out += table(["size", "arm", "diagnostics step", "answer", "cells", "R means"], rows)
    return out + [f"Note: {note[0].upper()}{note[1:]}." for note in notes] + ([""] if notes else [])


def _rho(result: Dict, with_p: bool) -> str:
    if result["rho"] is None:
        return f"- (n = {result['n']})"
    p = f", p = {result['p']:.3g}" if with_p else ""
    return f"rho = {result['rho']:.2f}{p}, n = {result['n']}"


def stability(records: List[Dict]) -> List[str]:
    out = [f"### {TITLES['e']}", "",
           "The ranking of R (R=1 included) by mean validation loss over the finished seeds at "
           "the second-to-last and at the last evaluation (tokens of each in brackets). A ranking "
           "of means: whether its differences exceed the seed spread is (a)'s question.", ""]
    rows = []
    for rec in records:
        s = rec["ranking_stability"]
        order = [" < ".join(f"R={r}" for r in ranking) or "-" for ranking in (s["previous"],
                                                                            s["last"])]
        tokens = [", ".join(f"{t:.4g}" for t in ts) or "-" for ts in s["tokens"]]
        detail = [f"R={a} passed R={b}" for a, b in s["swapped"]]
        detail += [f"no two evaluations for {_rs(s['absent'])}"] if s["absent"] else []
        rows.append([rec["size"], rec["arm"], f"{order[0]} ({tokens[0]})",
                     f"{order[1]} ({tokens[1]})", f"**{s['answer']}**", "; ".join(detail) or "-"])
    return out + table(["size", "arm", "second-to-last evaluation", "last evaluation",
                        "ranking", "detail"], rows)


def mismatch(records: List[Dict]) -> List[str]:
    out = [f"### {TITLES['f']}", "",
           "The CLP arm's loss minus the neutralized arm's (clp_offset=0), seed by seed: the two "
           "differ only in where a loop reads the previous loop's hidden state, so the gap is the "
           "training cost of the offset's mismatch (equal tokens and equal FLOPs at once). The "
           "fixed-cost account predicts it positive and the same at every R. Per R: the mean gap "
           "± its std over seeds; 'between Rs': gap at the larger R minus gap at the smaller, "
           f"seed by seed. The rule is paired: {PAIRED_RULE}.", ""]
    if not records:
        return out + ["No size has both a clp and a neutral arm: not answered.", ""]
    rs = sorted({r for rec in records for r in rec["per_r"]})
    rows, evidence = [], []
    for rec in records:
        moved = [f"R={d['b']} vs R={d['a']}: {d['difference']:+.3g}" for d in rec["between_r"]
                 if d["resolved"]]
        rows.append([rec["size"], MISMATCH_METRICS[rec["metric"]],
                     *[gap_words(rec["per_r"][r]) if r in rec["per_r"] else "-" for r in rs],
                     "; ".join(moved) or "none beyond the spread", f"**{rec['answer']}**"])
        evidence += [f"- {rec['size']}, {rec['metric']}, R={d['b']} vs R={d['a']} (seeds "
                     f"{', '.join(map(str, d['seeds'])) or '-'}): {gap_words(d)}"
                     for d in rec["between_r"]]
    out += table(["size", "metric", *[f"R={r}: clp - neutral" for r in rs], "between Rs",
                  "answer"], rows)
    return out + _details("Every paired comparison between Rs behind (f)", evidence)


def answers(records: List[Dict], overall: Dict, mismatch_records: List[Dict]) -> List[str]:
    out = ["## Answers", "", f"**Ranking stability: {overall['verdict']}** (section (e)).", ""]
    return (out + best_r(records) + optimum_moves(records) + offset_cost(records)
            + early_rank(records) + stability(records) + mismatch(mismatch_records))
