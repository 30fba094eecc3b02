"""The run folder's own files, written so that a crash or a full disk at any moment leaves them
readable, and read so that what such a moment can leave behind never stops a run or a tool.

    append_rows(path, rows)          metrics.jsonl: whole lines or nothing (a failed write is cut off)
    read_rows(path)                  its rows; a torn or garbled line is dropped with a warning
    write_file_atomically(path, text)   config.yaml, resume.yaml, .wandb_id: temp file, fsync, rename
    json_line(row)                   one strict-JSON line: NaN and +-inf become null

Rows hold null where a value is not finite (a skipped step's NaN loss, an inf gradient norm): bare
NaN is not JSON, and strict readers (jq, JavaScript, Go, pandas' default engine) refuse the whole
file. Readers treat null as missing. Only the standard library is imported here: the plotting tools
read runs without torch.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Iterable, List

logger = logging.getLogger("pretrain")


def finite_or_none(value):
    """`value`, or None for a float that is NaN or infinite (what JSON cannot hold)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def json_line(row: dict) -> str:
    clean = {key: finite_or_none(value) for key, value in row.items()}
    return json.dumps(clean, allow_nan=False) + "\n"


def append_rows(path: str, rows: Iterable[dict]) -> None:
    """Append `rows` as JSON lines (one os.write, unless the disk stores only part of them). If a
    write fails (ENOSPC, EIO), the file is cut back to its length before it, so that a later row
    never follows half a line; the error is raised. A kill -9 inside the write can still leave a torn last line: read_rows drops it and the
    trainer cuts it off when it starts again (pretrain/metrics.py)."""
    data = memoryview("".join(json_line(row) for row in rows).encode())
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        before = os.lseek(fd, 0, os.SEEK_END)
        try:
            written = 0
            while written < len(data):  # a full disk may store part of it, then fail
                written += os.write(fd, data[written:])
        except OSError:
            try:
                os.ftruncate(fd, before)
            except OSError:
                pass  # the reader drops a torn line; the write's error is the one to report
            raise
    finally:
        os.close(fd)


def read_rows(path: str, warn=None) -> List[dict]:
    """The rows of a JSON-lines file. A line that is not a JSON object (the torn last line of a
    crash or a full disk, a garbled one) is dropped with a warning naming the file and the line,
    through `warn` (default: the logger). Blank lines are skipped. NaN/Infinity written by older
    versions read as None, like the null written now."""
    warn = warn or logger.warning
    rows = []
    with open(path, "rb") as stream:
        lines = stream.read().split(b"\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line, parse_constant=lambda _: None)
        except ValueError:  # JSONDecodeError, UnicodeDecodeError
            row = None
        if not isinstance(row, dict):
            torn = number == len(lines)  # no newline after it: the write never ended
            warn(f"{path}, line {number}: {'a torn last line' if torn else 'not a JSON row'} "
                 f"({len(line)} bytes, e.g. left by a crash or a full disk) is ignored")
            continue
        rows.append(row)
    return rows


def valid_length(path: str) -> int:
    """The length of `path` up to the end of its last complete line (a torn tail excluded)."""
    with open(path, "rb") as stream:
        data = stream.read()
    return data.rfind(b"\n") + 1


def write_file_atomically(path: str, text: str) -> None:
    """Replace `path` by `text` so that any moment of a crash or a full disk leaves either the old
    file or the new one, never a torn one: the Checkpointer's durable write into a temp file
    beside it, then a rename and an fsync of the folder. The temp file is removed on failure."""
    from pretrain.checkpoint.files import fsync_dir, write_durably

    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name}.tmp")
    try:
        write_durably(tmp, lambda stream: stream.write(text))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    fsync_dir(folder)
