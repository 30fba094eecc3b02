"""A study's cells: every run folder under RUNS_DIR, read from its own files only
(docs/run_folder.md): the identity from config.yaml, the curves and the end state from
metrics.jsonl (through scripts/plot_run.py's `Run`, which drops a torn last line with a warning).

A cell's identity is (size, R, arm, seed): `model.name`, `model.num_loops`, the arm from
`model.clp` and `model.clp_offset` (absent in runs older than the neutralized arm: 1), and
`train.seed`. Folder names are never read. Arms: R=1 has no loops to shift, so it is one baseline,
"R1", shared by every arm; else "clp" (clp on, offset 1), "noclp" (clp off) or "neutral" (clp on,
offset 0: the neutralized arm).

A cell is `ok` only when its run reached `train.max_steps` with a finite last loss and a finite
final validation loss; anything else keeps its folder and says why (status), and the report lists
it instead of dropping it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from scripts.plot_run import Run
from scripts.study import compute
from scripts.study.stats import finite

CONFIG, METRICS = "config.yaml", "metrics.jsonl"
BASELINE = "R1"
ARMS = ("clp", "noclp", "neutral")


@dataclass
class Cell:
    folder: str
    # ok | unreadable config | unreadable run | no metrics | stopped early | diverged |
    # no validation loss | duplicate
    status: str = "ok"
    detail: str = ""                    # why, in words
    size: Optional[str] = None
    loops: Optional[int] = None
    arm: Optional[str] = None
    seed: Optional[int] = None
    max_steps: Optional[int] = None
    model: Dict = field(default_factory=dict)
    last_step: Optional[int] = None
    final: Dict = field(default_factory=dict)          # val_loss, humaneval_nll, humaneval_pass@1
    val_curve: List[Tuple[float, float, float]] = field(default_factory=list)  # tokens, FLOPs, loss
    flops_logged: bool = True
    final_diagnostics: Dict[int, dict] = field(default_factory=dict)
    early_diagnostics: Dict[int, dict] = field(default_factory=dict)  # the row nearest T/10
    early_step: Optional[int] = None
    parameters: Dict = field(default_factory=dict)  # total, non_embedding (compute.parameters)

    @property
    def key(self) -> Tuple:
        return (self.size, self.loops, self.arm, self.seed)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def find_run_folders(runs_dir: str) -> List[str]:
    """Folders holding a config.yaml or a metrics.jsonl, not looking inside one (its checkpoints/,
    .hydra/) nor into hidden folders; sorted, symlinked folders not followed."""
    found = []
    for folder, subfolders, names in os.walk(runs_dir):
        subfolders[:] = sorted(s for s in subfolders if not s.startswith("."))
        if CONFIG in names or METRICS in names:
            found.append(folder)
            subfolders[:] = []
    return sorted(found)


def arm_of(loops: int, clp: bool, offset: int) -> str:
    if loops == 1:
        return BASELINE
    if not clp:
        return "noclp"
    return "clp" if offset == 1 else "neutral"


def _identity(cell: Cell) -> Optional[str]:
    """Fill the identity from config.yaml; the reason it cannot be read, else None."""
    path = os.path.join(cell.folder, CONFIG)
    if not os.path.isfile(path):
        return f"{path} does not exist"
    import yaml

    try:
        with open(path, "rb") as stream:
            config = yaml.safe_load(stream)
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as error:
        mark = getattr(error, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        return f"{path} is not readable YAML ({str(error).splitlines()[0]}{where})"
    model = config.get("model") if isinstance(config, dict) else None
    train = config.get("train") if isinstance(config, dict) else None
    if not isinstance(model, dict) or not isinstance(train, dict):
        return f"{path} has no model and train sections"
    wanted = {"model.name": (model.get("name"), str),
              "model.num_loops": (model.get("num_loops"), int),
              "model.clp": (model.get("clp", True), bool),
              "model.clp_offset": (model.get("clp_offset", 1), int),
              "train.seed": (train.get("seed"), int),
              "train.max_steps": (train.get("max_steps"), int),
              "train.seq_length": (train.get("seq_length"), int)}
    for key, (value, kind) in wanted.items():
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return f"{path}: {key} is {value!r}, not a {kind.__name__}"
    cell.size, cell.loops, cell.seed = model["name"], model["num_loops"], train["seed"]
    cell.arm = arm_of(cell.loops, model.get("clp", True), model.get("clp_offset", 1))
    cell.max_steps, cell.model = train["max_steps"], dict(model, seq_length=train["seq_length"])
    cell.parameters = compute.parameters(model)
    return None


def _nearest(diagnostics: List[dict], step: float) -> Tuple[Optional[int], Dict[int, dict]]:
    steps = sorted({row["step"] for row in diagnostics if isinstance(row.get("step"), int)})
    if not steps:
        return None, {}
    chosen = min(steps, key=lambda s: (abs(s - step), s))  # a tie: the earlier step
    return chosen, {row["loop"]: row for row in diagnostics if row.get("step") == chosen}


def _curves(cell: Cell, run: Run) -> None:
    seq_length = cell.model["seq_length"]
    per_token = None
    for row in run.train:
        if not ("val_loss" in row and finite(row.get("consumed_samples"))):
            continue
        tokens = (row["tokens"] if finite(row.get("tokens"))
                  else row["consumed_samples"] * seq_length)
        flops = row.get("train_flops")
        if not finite(flops):
            cell.flops_logged = False
            per_token = per_token or compute.flops_per_token(cell.model, seq_length)
            flops = tokens * per_token if per_token else math.nan
        if finite(row["val_loss"]):
            cell.val_curve.append((float(tokens), float(flops), float(row["val_loss"])))


def _end_state(cell: Cell, run: Run) -> None:
    train = [row for row in run.train if isinstance(row.get("step"), int)]
    last = train[-1]
    cell.last_step = last["step"]
    logged = [row for row in run.rows if "loop" not in row]  # a code eval may log a row of its own
    for key in ("val_loss", "humaneval_nll", "humaneval_pass@1"):
        rows = [row for row in logged if key in row]
        cell.final[key] = rows[-1][key] if rows else None
    if not finite(last.get("loss")) or last.get("skipped"):
        skipped = last.get("skipped_steps")
        cell.status, cell.detail = "diverged", (
            f"the last logged step ({last['step']}) has a non-finite loss"
            + (f" ({skipped} skipped steps)" if skipped else ""))
    elif any("val_loss" in row for row in logged) and not finite(cell.final["val_loss"]):
        cell.status, cell.detail = "diverged", "the last validation loss is not finite"
    elif cell.last_step < cell.max_steps:
        cell.status, cell.detail = "stopped early", (
            f"stopped at step {cell.last_step} of train.max_steps={cell.max_steps}")
    elif not finite(cell.final["val_loss"]):
        cell.status, cell.detail = "no validation loss", "no val_loss was logged"


def read_cell(folder: str) -> Cell:
    cell = Cell(folder)
    reason = _identity(cell)
    if reason:
        cell.status, cell.detail = "unreadable config", reason
        return cell
    if not os.path.isfile(os.path.join(folder, METRICS)):
        cell.status, cell.detail = "no metrics", "no metrics.jsonl: the run never logged a step"
        return cell
    import yaml
    from omegaconf.errors import OmegaConfBaseException

    try:
        run = Run(folder)  # reads config.yaml again, through OmegaConf
    except (OSError, ValueError, yaml.YAMLError, OmegaConfBaseException) as error:
        # unreadable (permissions, a folder in its place, a config OmegaConf refuses): listed
        cell.status, cell.detail = "unreadable run", f"{folder}: {error}"
        return cell
    if not any(isinstance(row.get("step"), int) for row in run.train):
        cell.status, cell.detail = "no metrics", "metrics.jsonl holds no train row"
        return cell
    _end_state(cell, run)
    _curves(cell, run)
    cell.final_diagnostics = run.last_diagnostics()
    cell.early_step, cell.early_diagnostics = _nearest(run.diagnostics, cell.max_steps / 10)
    return cell


# The fields that make a size: a study may vary them by override under one preset name.
SHAPE = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
         "vocab_size")


def _name_sizes(cells: List[Cell]) -> None:
    """A preset name that covers several shapes (sizes set by overrides) gets each shape named."""
    shapes: Dict[str, set] = {}
    shape_of = {}
    for cell in (c for c in cells if c.size is not None):
        config = compute.model_config(cell.model)  # keys absent from an old config: defaults
        shape_of[cell.folder] = tuple(getattr(config, k, None) if config is not None
                                      else cell.model.get(k) for k in SHAPE)
        shapes.setdefault(cell.size, set()).add(shape_of[cell.folder])
    for cell in (c for c in cells if c.size is not None):
        if len(shapes[cell.size]) > 1:
            named = zip(("L", "h", "ffn", "heads", "kv", "V"), shape_of[cell.folder])
            cell.size += "-" + "-".join(f"{label}{value}" for label, value in named)


def read_cells(runs_dir: str) -> List[Cell]:
    """Every run folder's cell. Two folders with one identity: the first finished one counts, the
    other is listed as a duplicate (never averaged twice)."""
    cells = [read_cell(folder) for folder in find_run_folders(runs_dir)]
    _name_sizes(cells)
    counted = {}
    for cell in sorted((c for c in cells if c.size is not None), key=lambda c: not c.ok):
        if cell.key in counted:
            cell.status, cell.detail = "duplicate", f"the same cell as {counted[cell.key]}"
        else:
            counted[cell.key] = cell.folder
    return cells
