"""The report from the run folders alone: read the cells, summarise, answer, and write
report.md, report.json and the PNGs into the output folder, each file whole (temp, then rename).

Refused before anything is written (exit 2, one paragraph): a runs folder that is missing or holds
no run folder, an output that is a file, or an output inside a run folder (the report would mix
into a run's own files).
"""

from __future__ import annotations

import json
import math
import os
from typing import Dict, List

from model.config import ConfigError
from pretrain.checkpoint.destination import nothing_left_on_failure
from pretrain.run_files import write_file_atomically
from scripts.study import (answers, mismatch, plots, render, render_answers, stability, summary,
                           tables)
from scripts.study.cells import Cell, find_run_folders, read_cells
from scripts.study.stats import PAIRED_RULE, RULE


def check_paths(runs_dir: str, out_dir: str) -> List[str]:
    """The run folders under `runs_dir`, once the paths are known to work."""
    if not os.path.isdir(runs_dir):
        raise FileNotFoundError(f"RUNS_DIR {runs_dir} is not a folder; pass the folder the grid "
                                f"wrote its run folders into (e.g. outputs/clp_ablation)")
    if not out_dir:
        raise ConfigError("--out is empty; pass the report's folder, or leave --out out to "
                          "write into RUNS_DIR")
    folders = find_run_folders(runs_dir)
    if folders == [runs_dir]:
        raise ConfigError(f"RUNS_DIR {runs_dir} is itself a run folder (one run); pass the folder "
                          f"that holds the grid's run folders (e.g. outputs/clp_ablation)")
    if not folders:
        raise ConfigError(f"RUNS_DIR {runs_dir} holds no run folder (no config.yaml or "
                          f"metrics.jsonl in it or below it); pass the folder the grid wrote its "
                          f"runs into (e.g. outputs/clp_ablation)")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ConfigError(f"--out {out_dir} is a file, not a folder; pass a folder")
    target = os.path.realpath(out_dir)
    for folder in folders:
        real = os.path.realpath(folder)
        if target == real or target.startswith(real + os.sep):
            raise ConfigError(f"--out {out_dir} lies in the run folder {folder}: the report would "
                              f"mix its files into a run's own; pass --out outside it (the default "
                              f"is RUNS_DIR itself)")
    return folders


def _json_ready(value):
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"  # a t from a spread of zero: not "no value"
    if isinstance(value, float) and not math.isfinite(value):
        return None  # strict JSON, like metrics.jsonl
    return value


def _cell_record(cell: Cell) -> Dict:
    return {"folder": cell.folder, "status": cell.status, "detail": cell.detail,
            "size": cell.size, "loops": cell.loops, "arm": cell.arm, "seed": cell.seed,
            "last_step": cell.last_step, "max_steps": cell.max_steps, "final": cell.final,
            "flops_logged": cell.flops_logged}


def build(runs_dir: str) -> Dict:
    """Everything the report says, as data (report.json holds it)."""
    cells = read_cells(runs_dir)
    budgets = tables.budgets(cells)
    groups = tables.groups(cells, budgets)
    sizes = tables.sizes(cells)
    records = answers.answer_all(groups, sizes, tables.arms(cells),
                                 lambda size, arm: tables.series(groups, size, arm))
    first = {}
    for cell in cells:
        if cell.size is not None:
            first.setdefault(cell.size, cell.parameters)
    computed = [c.folder for c in cells if c.ok and not c.flops_logged]
    context = {"runs_dir": runs_dir, "parameters": {s: first[s] for s in sizes},
               "flops_logged": not computed, "flops_computed": computed}
    return {"context": context, "cells": cells, "groups": groups, "budgets": budgets,
            "answers": records, "stability": stability.overall(records),
            "mismatch": mismatch.answer_all(cells, sizes),
            "missing": tables.missing(cells)}


def markdown(data: Dict, pngs: List[str]) -> str:
    """report.md: the scope, the generated summary, the method, the tables, the answers, the cells
    left out, the plots."""
    lines = (render.scope(data["context"])
             + summary.paragraph(data["groups"], data["answers"], data["stability"],
                                 data["mismatch"])
             + render.method(data["context"]) + render.summary_tables(data["groups"],
                                                                      data["budgets"])
             + render_answers.answers(data["answers"], data["stability"], data["mismatch"])
             + render.problems(data["cells"], data["missing"]))
    lines += ["## Plots", ""] + [f"![{name}]({name})" for name in pngs] + [""]
    return "\n".join(lines)


def write(runs_dir: str, out_dir: str) -> List[str]:
    """Write the report into `out_dir` (made if absent; what this made is removed again if the
    writing fails: pretrain/checkpoint/destination.py nothing_left_on_failure)."""
    check_paths(runs_dir, out_dir)
    with nothing_left_on_failure(out_dir, "--out"):
        os.makedirs(out_dir, exist_ok=True)
        data = build(runs_dir)
        pngs = []
        for size, budget in data["budgets"].items():  # in size order (tables.sizes)
            pngs.append(plots.validation(data["cells"], size, budget, out_dir))
            pngs.append(plots.effective_rank(data["groups"], size, out_dir))
        text = markdown(data, pngs)
        record = {**data, "cells": [_cell_record(c) for c in data["cells"]], "plots": pngs,
                  "rule": RULE, "paired_rule": PAIRED_RULE,
                  "interpolation": render.INTERPOLATION}
        write_file_atomically(os.path.join(out_dir, "report.json"),
                              json.dumps(_json_ready(record), indent=1, allow_nan=False) + "\n")
        write_file_atomically(os.path.join(out_dir, "report.md"), text)
    return [os.path.join(out_dir, name) for name in ("report.md", "report.json", *pngs)]
