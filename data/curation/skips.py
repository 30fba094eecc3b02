"""What the readers skip, by name: files that are not regular readable files, and records that
cannot become a document (a line that is not UTF-8 or not JSON, a text that is null, missing or
not a string). Nothing is dropped silently and nothing is fatal for the rest of the input.

Each skip is
- counted: `dropped_<reason>` in the reader's datatrove statistics, so in the read row of the
  table and in `<output>.stats.json`'s `removed`;
- warned: one log line naming the file (and the line or row), the first WARNINGS_SHOWN per task;
- listed: one JSON line `{"file", "line" (jsonl; "row" for parquet), "reason", "detail"}` in
  `<work>/skipped/<rank>-<input>.jsonl`;
  the finalize stage copies the first LISTED_IN_STATS of them into `<output>.stats.json`
  (`skipped`, with `skipped_total`).
"""

import glob
import json
import os
from typing import Dict, List, Optional

from datatrove.utils.logging import logger

from data.source_files import display_name

WARNINGS_SHOWN = 50
LISTED_IN_STATS = 1000


def skipped_folder(work_dir: str) -> str:
    return os.path.join(work_dir, "skipped")


class SkipRecorder:
    """Mixed into a datatrove reader; `start_skips(rank)` at the start of its task's run."""

    work_dir: str = ""
    input_index: int = 0

    def start_skips(self, rank: int) -> None:
        self._skip_path = os.path.join(skipped_folder(self.work_dir),
                                       f"{rank:05d}-{self.input_index:03d}.jsonl")
        self._skips_warned = 0
        if os.path.exists(self._skip_path):
            os.remove(self._skip_path)  # a killed attempt's list: this attempt skips the same again

    def skip_entry(self, path: str, line: Optional[int], reason: str, detail: str,
                   unit: str = "line") -> None:
        """Count, warn and list one skipped entry (line: of a jsonl file; row: of a parquet file)."""
        self.stat_update(f"dropped_{reason}")
        root = getattr(self, "root", "")
        name = display_name(os.path.join(root, path) if root else path)
        where = f"{name} {unit} {line}" if line is not None else name
        self._skips_warned += 1
        if self._skips_warned <= WARNINGS_SHOWN:
            logger.warning(f"skipped {where}: {detail}")
        elif self._skips_warned == WARNINGS_SHOWN + 1:
            logger.warning(f"more skipped entries in this task: listed in {self._skip_path}")
        os.makedirs(os.path.dirname(self._skip_path), exist_ok=True)
        with open(self._skip_path, "a") as stream:
            entry = {"file": name, unit: line, "reason": reason, "detail": detail}
            stream.write(json.dumps(entry) + "\n")


def collect_skips(work_dir: str) -> Dict:
    """{"skipped_total": n, "skipped": [the first LISTED_IN_STATS entries, by task]}."""
    listed: List[Dict] = []
    total = 0
    for path in sorted(glob.glob(os.path.join(skipped_folder(work_dir), "*.jsonl"))):
        with open(path) as stream:
            for line in stream:
                if not line.strip():
                    continue
                total += 1
                if len(listed) < LISTED_IN_STATS:
                    listed.append(json.loads(line))
    return {"skipped_total": total, "skipped": listed}
