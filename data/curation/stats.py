"""Per-stage statistics: documents in and out, bytes, tokens, and why documents were removed.

`Tally(point)` is a pass-through step that counts the documents and UTF-8 bytes going by at a point
of a stage (read, filtered, exact_dedup, near_dedup). Its counts, the readers' and filters'
`dropped_<reason>` counts and the shard writer's token counts are in each task's datatrove stats
file (<work>/logs/<stage>/stats/<rank>.json, written when the task completes). `summarize` adds
them up over the tasks; `format_table` prints the result.
"""

import glob
import json
import os
from collections import Counter
from typing import Dict

from datatrove.pipeline.base import PipelineStep

TALLY_TYPE = "📊 - TALLY"


class Tally(PipelineStep):
    type = TALLY_TYPE

    def __init__(self, point: str):
        self.name = point  # before PipelineStep.__init__: the stats are named after it
        super().__init__()

    def run(self, data, rank: int = 0, world_size: int = 1):
        for document in data:
            self.stat_update("documents")
            self.stat_update("bytes", value=len(document.text.encode("utf-8", "surrogatepass")))
            yield document


def _value(metric) -> int:
    return metric if isinstance(metric, (int, float)) else metric["total"]


def stage_counters(logging_dir: str) -> Dict[str, Counter]:
    """{step name: its counters summed over the stage's completed tasks}."""
    totals: Dict[str, Counter] = {}
    for path in sorted(glob.glob(os.path.join(logging_dir, "stats", "*.json"))):
        with open(path) as stream:
            for step in json.load(stream):
                counter = totals.setdefault(step["name"], Counter())
                for label, metric in step["stats"].items():
                    counter[label] += _value(metric)
    return totals


def _tally(counters: Dict[str, Counter], point: str) -> Counter:
    return counters.get(f"{TALLY_TYPE}: {point}", Counter())


def _reasons(counters: Dict[str, Counter]) -> Counter:
    reasons = Counter()
    for counter in counters.values():
        for label, count in counter.items():
            if label.startswith("dropped_"):
                reasons[label[len("dropped_"):]] += count
    return reasons


def summarize(stage_dirs: Dict[str, str], tokens_step: str) -> Dict:
    """The statistics of a finished run from its stages' logging folders ({stage: folder})."""
    filter_counters = stage_counters(stage_dirs["filter"])
    tokenize_counters = stage_counters(stage_dirs["tokenize"])
    read, filtered = _tally(filter_counters, "read"), _tally(filter_counters, "filtered")
    reader_reasons = _reasons({k: v for k, v in filter_counters.items() if "READER" in k})
    filter_reasons = _reasons({k: v for k, v in filter_counters.items() if "FILTER" in k})
    rows = [
        {"stage": "read", "documents_in": read["documents"] + sum(reader_reasons.values()),
         "documents_out": read["documents"], "bytes_out": read["bytes"], "removed": dict(reader_reasons)},
        {"stage": "filter", "documents_in": read["documents"], "documents_out": filtered["documents"],
         "bytes_out": filtered["bytes"], "removed": dict(filter_reasons)},
    ]
    previous = filtered
    for point, reason in (("exact_dedup", "exact_duplicate"), ("near_dedup", "near_duplicate")):
        after = _tally(tokenize_counters, point)
        if not after:  # the stage was switched off
            continue
        rows.append({"stage": point, "documents_in": previous["documents"],
                     "documents_out": after["documents"], "bytes_out": after["bytes"],
                     "removed": {reason: previous["documents"] - after["documents"]}})
        previous = after
    written = tokenize_counters.get(tokens_step, Counter())
    rows.append({"stage": "tokenize", "documents_in": previous["documents"],
                 "documents_out": written["documents"], "bytes_out": previous["bytes"],
                 "tokens": written["tokens"], "removed": {}})
    removed = Counter()
    for row in rows:
        removed.update(row["removed"])
    return {"stages": rows, "removed": dict(sorted(removed.items())),
            "documents": written["documents"], "tokens": written["tokens"]}


def _human(count: float) -> str:
    for unit in ("", "k", "M", "G", "T"):
        if abs(count) < 1000 or unit == "T":
            return f"{count:.0f}{unit}" if unit == "" else f"{count:.1f}{unit}"
        count /= 1000.0
    return str(count)


def format_table(summary: Dict) -> str:
    header = f"{'stage':<12} {'docs in':>9} {'docs out':>9} {'bytes out':>10} {'tokens':>9}  removed"
    lines = [header, "-" * len(header)]
    for row in summary["stages"]:
        removed = ", ".join(f"{reason} {count}" for reason, count in sorted(row["removed"].items())
                            if count) or "-"
        tokens = _human(row["tokens"]) if "tokens" in row else ""
        lines.append(f"{row['stage']:<12} {row['documents_in']:>9} {row['documents_out']:>9} "
                     f"{_human(row['bytes_out']) + 'B':>10} {tokens:>9}  {removed}")
    return "\n".join(lines)


def write_summary(summary: Dict, path: str) -> None:
    tmp_path = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp_path, "w") as stream:
            json.dump(summary, stream, indent=2)
        os.replace(tmp_path, path)
    except OSError:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def read_summary(path: str) -> Dict:
    with open(path) as stream:
        return json.load(stream)
