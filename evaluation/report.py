"""What an evaluation leaves behind in its --out folder, and what it prints.

- ``samples.jsonl``: one row per sample: task_id, sample, completion, passed, result, time_s (and
  new_tokens when this run generated it); for humaneval_nll one row per problem: task_id, tokens,
  nll (mean nats per token), bits.
- ``summary.json``: the task, where the model or samples came from, the metrics (pass@k, or nll and
  bits), counts, generation and execution settings and speeds.
- a console table of the same numbers.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import Counter, defaultdict
from typing import Dict, List, Optional, Sequence

from evaluation.nll import SolutionScore, summarize
from evaluation.pass_at_k import pass_at_k_table
from evaluation.sandbox import Outcome
from pretrain.checkpoint.files import fsync_dir, write_durably
from pretrain.run_files import finite_or_none

SAMPLES_FILE, SUMMARY_FILE = "samples.jsonl", "summary.json"


def _strict(value):
    """JSON's own values only: a float that is NaN or infinite becomes null (strict JSON readers
    refuse a bare NaN), in nested summaries too."""
    if isinstance(value, dict):
        return {key: _strict(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(item) for item in value]
    return finite_or_none(value)


def _jsonl_text(rows: Sequence[dict]) -> str:
    # ASCII (json.dumps' default): any string, lone surrogates too.
    return "".join(json.dumps(_strict(row), allow_nan=False) + "\n" for row in rows)


def _json_text(data: dict) -> str:
    return json.dumps(_strict(data), indent=2, allow_nan=False) + "\n"


def _create_whole(path: str, text: str) -> None:
    """`path` with `text`, all of it or nothing: written durably into a temp file beside it, then
    linked into place (a link never replaces a file: FileExistsError leaves an existing one as it
    is). A kill or a full disk at any moment leaves no torn file under the name."""
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp")
    try:
        write_durably(tmp, lambda stream: stream.write(text))
        os.link(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp)


def sample_rows(samples: Sequence[dict], outcomes: Sequence[Outcome]) -> List[dict]:
    """``samples``: dicts with task_id, sample, completion (and new_tokens), in outcome order."""
    return [{**sample, "passed": outcome.passed, "result": outcome.result,
             "time_s": round(outcome.seconds, 4)} for sample, outcome in zip(samples, outcomes)]


def humaneval_summary(rows: Sequence[dict], source: dict, execution: dict,
                      generation: Optional[dict] = None) -> dict:
    passed_by_task: Dict[str, List[bool]] = defaultdict(list)
    for row in rows:
        passed_by_task[row["task_id"]].append(row["passed"])
    counts = Counter(row["passed"] for row in rows)
    per_task = sorted({len(passed) for passed in passed_by_task.values()})
    return {
        "task": "humaneval", **source,
        **pass_at_k_table(passed_by_task),
        "problems": len(passed_by_task),
        "samples_per_task": per_task[0] if len(per_task) == 1 else per_task,
        "samples": len(rows), "passed": counts[True],
        "timed_out": sum(row["result"] == "timed out" for row in rows),
        "generation": generation, "execution": execution,
    }


def nll_rows(scores: Sequence[SolutionScore]) -> List[dict]:
    return [{"task_id": s.task_id, "tokens": s.tokens,
             "nll": s.nats / s.tokens if s.tokens else None, "bits": s.bits} for s in scores]


def nll_summary(scores: Sequence[SolutionScore], source: dict, seconds: float) -> dict:
    return {"task": "humaneval_nll", **source, **summarize(scores), "problems": len(scores),
            "seconds": round(seconds, 3)}


def _source_line(summary: dict) -> str:
    parts = [summary.get("checkpoint") or summary.get("samples_file") or ""]
    if summary.get("step") is not None:
        parts.append(f"step {summary['step']}")
    if summary.get("num_loops") is not None:
        parts.append(f"R={summary['num_loops']}")
    return ", ".join(p for p in parts if p)


def table(summary: dict) -> str:
    """The console table of a summary (either task)."""
    lines = [f"{summary['task']}: {summary['problems']} problems  ({_source_line(summary)})"]
    if summary["task"] == "humaneval_nll":
        lines += [f"  nll   {summary['humaneval_nll']:.4f} nats/token over "
                  f"{summary['humaneval_tokens']} solution tokens",
                  f"  bits  {summary['humaneval_bits']:.1f} (all solutions)"]
        return "\n".join(lines)
    for key in sorted((k for k in summary if k.startswith("pass@")), key=lambda k: int(k[5:])):
        lines.append(f"  {key:<8} {summary[key]:.4f}")
    lines.append(f"  passed {summary['passed']}/{summary['samples']}  timed out "
                 f"{summary['timed_out']}  samples per task {summary['samples_per_task']}")
    generation, execution = summary.get("generation"), summary["execution"]
    if generation:
        lines.append(f"  generation  {generation['tokens']} tokens in "
                     f"{generation['seconds']:.1f} s ({generation['tokens_per_s']:.1f} tokens/s, "
                     f"temperature "
                     f"{generation['temperature']}, top-p {generation['top_p']})")
    lines.append(f"  execution   {summary['samples']} samples in {execution['seconds']:.1f} s "
                 f"({execution['samples_per_s']:.1f} samples/s, {execution['workers']} workers, "
                 f"{execution['sandbox']} sandbox)")
    return "\n".join(lines)


def check_out_dir(out_dir: str) -> None:
    """Refuse an --out that exists and is not an empty folder, before any work: the evaluation
    never overwrites a file (its own input among them: --samples DIR/samples.jsonl --out DIR)."""
    from model.config import ConfigError

    if os.path.lexists(out_dir) and not (os.path.isdir(out_dir) and not os.listdir(out_dir)):
        raise ConfigError(f"--out {out_dir} already exists and is not an empty folder; an "
                          f"evaluation writes {SAMPLES_FILE} and {SUMMARY_FILE} into a new (or "
                          "empty) folder and never overwrites: pass another --out")
    parent = os.path.dirname(os.path.abspath(out_dir))
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out_dir} cannot be made: {parent} is not a folder this user "
                          "can write; pass another --out")


def write_outputs(out_dir: str, rows: Sequence[dict], summary: dict) -> Dict[str, str]:
    """The two files, each created whole (`_create_whole`), never overwriting (FileExistsError: an
    existing file is left as it is); a failed write removes the files it created, and the folder
    if it made it. Strict JSON: a non-finite number is null."""
    made = not os.path.lexists(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    written: List[str] = []
    try:
        for name, text in ((SAMPLES_FILE, _jsonl_text(rows)), (SUMMARY_FILE, _json_text(summary))):
            path = os.path.join(out_dir, name)
            _create_whole(path, text)
            written.append(path)
        fsync_dir(out_dir)
    except BaseException:
        for path in written:
            with contextlib.suppress(OSError):
                os.remove(path)
        if made:
            with contextlib.suppress(OSError):
                os.rmdir(out_dir)
        raise
    return {"samples": written[0], "summary": written[1]}
