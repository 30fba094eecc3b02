"""The report as Markdown: the scope statement, the method, the tables per size x R x arm, the
compute-fair tables (each says which comparison it is), the answers with their evidence, and the
cells that are missing, unfinished or diverged."""

from __future__ import annotations

from typing import Dict, List

from scripts.study.answers import METRICS
from scripts.study.stats import RULE

INTERPOLATION = ("linear in log x (tokens or FLOPs) between the two evaluations around the "
                 "budget, never extrapolated: a validation curve falls roughly as a power of "
                 "compute, so it is straighter in log x than in x")


def fmt(summary: Dict, digits: int = 4) -> str:
    """mean ± std [min, max] (n); '-' without values. One seed: its value and n = 1."""
    if not summary or not summary["n"]:
        return "-"
    g = f"{{:.{digits}g}}"
    if summary["n"] == 1:
        return f"{g.format(summary['mean'])} (n=1)"
    return (f"{g.format(summary['mean'])} ± {g.format(summary['std'])} "
            f"[{g.format(summary['min'])}, {g.format(summary['max'])}] (n={summary['n']})")


def _table(header: List[str], rows: List[List[str]]) -> List[str]:
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
            + [""])


def scope(context: Dict) -> List[str]:
    sizes = ", ".join(f"{name}: {_params(p)}" for name, p in context["parameters"].items())
    counts = [p["non_embedding"] for p in context["parameters"].values() if p["non_embedding"]]
    if len(counts) > 1:
        sizes += f" (a span of {max(counts) / min(counts):.1f}x in non-embedding parameters)"
    totals = [p["total"] for p in context["parameters"].values() if p["total"]]
    if totals and max(totals) < SMALL:
        scope_line = (f"**Scope.** The largest model here has {max(totals) / 1e6:.2f}M parameters: "
                      f"this report (a CPU-sized grid) demonstrates the method of the study; it "
                      f"is not a claim about 7B models, whose loop-count optimum nothing here "
                      f"measures.")
    else:
        scope_line = ("**Scope.** The answers hold for the sizes above and the tokens these runs "
                      "saw; they are not a claim about other sizes.")
    return [
        "# Loop-count study: the CLP ablation", "",
        f"Written by `python -m scripts.loop_study report` from the run folders under "
        f"`{context['runs_dir']}` alone (config.yaml and metrics.jsonl of each; folder names are "
        f"not read). Model sizes (parameters, total / non-embedding, from the planner's counter): "
        f"{sizes}.", "", scope_line, ""]


SMALL = 1e9  # below this the report says outright that it demonstrates the method only


def _params(p: Dict) -> str:
    if p["total"] is None:
        return "unknown"
    return f"{p['total'] / 1e6:.2f}M / {p['non_embedding'] / 1e6:.2f}M"


def method(context: Dict) -> List[str]:
    flops = ("every cell logged its cumulative training FLOPs (`train_flops`)"
             if context["flops_logged"] else
             "some cells did not log `train_flops`: their training FLOPs are computed here as "
             "tokens x model/flops.py's flops_per_token (the function behind the trainer's MFU), "
             f"for: {', '.join(context['flops_computed'])}")
    return [
        "## Method", "",
        "- Spread: mean ± sample std (n - 1) [min, max] over the finished seeds, n shown. "
        "Cells that are missing, unfinished or diverged are listed at the end and left out of "
        "every mean.",
        f"- Exceeds the seed spread: {RULE}.",
        f"- Compute-fair comparison: the validation loss of each run interpolated at one budget "
        f"per size, {INTERPOLATION}. Equal tokens: the least tokens every finished cell of the "
        f"size reached. Equal FLOPs: the least training FLOPs any finished cell of the size "
        f"reached (the R=1 run's, when all saw the same tokens); an R>1 run is read there part of "
        f"the way through its own learning-rate schedule, not as a run trained to that budget.",
        f"- Training FLOPs: {flops}.",
        "- Effective rank at T/10: the diagnostics row nearest step train.max_steps / 10, of the "
        "last loop (the representation the head reads).", ""]


def summary_tables(groups: List[Dict], budgets: Dict) -> List[str]:
    out = ["## Per size x R x arm", "",
           "R1 is the one R=1 baseline shared by every arm. Final values at each run's last "
           "step (equal tokens when every cell ran the same steps and batch).", ""]
    rows = [[g["size"], g["loops"], g["arm"], f"{g['n_ok']}/{g['found']}", fmt(g["val_loss"]),
             fmt(g["humaneval_nll"]), _pass(g["humaneval_pass@1"])] for g in groups]
    out += _table(["size", "R", "arm", "finished/found", "final val loss", "HumanEval NLL",
                   "pass@1"], rows)
    out += ["### Compute-fair: validation loss at equal tokens and at equal training FLOPs", ""]
    out += ["Budgets per size: " + "; ".join(
        f"{s}: {_num(b['tokens'])} tokens, {_num(b['flops'])} FLOPs" for s, b in budgets.items()),
        ""]
    rows = [[g["size"], g["loops"], g["arm"], fmt(g["val_at_equal_tokens"]),
             fmt(g["val_at_equal_flops"])] for g in groups]
    out += _table(["size", "R", "arm", "val loss at equal TOKENS", "val loss at equal FLOPs"],
                  rows)
    out += ["### Final diagnostics per loop", ""]
    rows = [[g["size"], g["loops"], g["arm"], loop, fmt(m["output_shift"]), fmt(m["offset_cost"]),
             fmt(m["effective_rank"])]
            for g in groups for loop, m in sorted(g["diagnostics"].items())]
    out += _table(["size", "R", "arm", "loop", "output shift", "offset cost", "effective rank"],
                  rows) if rows else ["No diagnostics rows were logged.", ""]
    return out


def _pass(summary: Dict) -> str:
    if not summary["n"]:
        return "not logged"
    return "0 in every seed" if summary["max"] == 0 else fmt(summary, 3)


def _num(value) -> str:
    return "-" if value is None else f"{value:.4g}"


def answers(records: List[Dict]) -> List[str]:
    out = ["## Answers", ""]
    titles = {"a": "(a) Best R per size and arm",
              "b": "(b) Does removing CLP move the optimum past two loops?",
              "c": "(c) Is the offset cost flat across loops?",
              "d": "(d) Does the effective rank at ~T/10 predict the final ranking of R?"}
    out += [f"### {titles['a']}", ""]
    for rec in records:
        for metric, best in rec["best_r"].items():
            if best["best"] is not None:
                evidence = "; ".join(f"R={r} vs R={best['best']}: {_diff(c)}"
                                     for r, c in best["comparisons"].items())
                out.append(f"- {rec['size']}, {rec['arm']}, {METRICS[metric]}: "
                           f"**{best['verdict']}**"
                           + (f". Evidence: {evidence}" if evidence else ""))
    out += ["", f"### {titles['b']}", ""]
    for rec in records:
        for metric, moved in rec.get("optimum_moves", {}).items():
            out.append(f"- {rec['size']}, {rec['arm']} vs clp, {METRICS[metric]}: "
                       f"**{moved['verdict']}**")
    out += ["", f"### {titles['c']}", ""]
    for rec in records:
        for r, flat in rec["offset_cost"]["across_loops"].items():
            out.append(f"- {rec['size']}, {rec['arm']}, R={r}, across loops r >= 2: "
                       f"**{flat['verdict']}**")
        out.append(f"- {rec['size']}, {rec['arm']}, across R (cost averaged over loops r >= 2): "
                   f"**{rec['offset_cost']['across_r']['verdict']}**")
    out += ["", f"### {titles['d']}", ""]
    for rec in records:
        d = rec["early_rank"]
        steps = ", ".join(str(s) for s in d["steps"]) or "-"
        out.append(f"- {rec['size']}, {rec['arm']} (diagnostics at step {steps}): "
                   f"**{d['verdict']}**" + (f"; {d['note']}" if d["note"] else ""))
    return out + [""]


def _diff(c: Dict) -> str:
    if c["difference"] is None:
        return c["why"]
    t = "" if c["welch_t"] is None else f", Welch t {c['welch_t']:.2f}"
    word = "exceeds the seed spread" if c["resolved"] else "not beyond the seed spread"
    return f"+{c['difference']:.4g} ({word}: {c['why']}{t})"


def problems(cells, missing) -> List[str]:
    out = ["## Missing, unfinished and diverged cells", "",
           "Expected: every size x R x arm x seed found anywhere under the runs folder (R=1 once "
           "per size and seed). None of these enters a mean.", ""]
    rows = [[c.size or "?", c.loops or "?", c.arm or "?", c.seed if c.seed is not None else "?",
             c.status, c.detail, f"`{c.folder}`"] for c in cells if not c.ok]
    rows += [[s, r, a, seed, "missing", "no run folder has this identity", "-"]
             for s, r, a, seed in missing]
    if not rows:
        return out + ["None: every expected cell finished.", ""]
    return out + _table(["size", "R", "arm", "seed", "status", "why", "folder"], rows)


def markdown(context: Dict, groups, budgets, records, cells, missing, plots) -> str:
    lines = scope(context) + method(context) + summary_tables(groups, budgets) + answers(records)
    lines += problems(cells, missing)
    lines += ["## Plots", ""] + [f"![{name}]({name})" for name in plots] + [""]
    return "\n".join(lines)
