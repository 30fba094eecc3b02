"""The file-system side of the checkpoint frame: names, durable writes, `latest`, the listing.

    <checkpoint.dir>/latest          one line, e.g. "iter_0000200"; replaced atomically
    <checkpoint.dir>/iter_0000200/   a published checkpoint
    <checkpoint.dir>/.tmp_iter_0000200/   one being written (never read as a checkpoint)
"""

from __future__ import annotations

import os
import shutil
from typing import List

LATEST = "latest"
STATE_FILE = "loopcoder.json"     # the trainer's state: step, data position, schedule, model fields
CONFIG_FILE = "config.yaml"       # the run's resolved config
TOKENIZER_FILE = "tokenizer.model"  # the run's sentencepiece model: a checkpoint is self-contained
RNG_DIR = "rng"                   # rng/rank_XXXXX.pt: per-rank RNG states


def iter_name(step: int) -> str:
    return f"iter_{step:07d}"


def tmp_name(step: int) -> str:
    return f".tmp_{iter_name(step)}"


def rng_file(folder: str, rank: int) -> str:
    return os.path.join(folder, RNG_DIR, f"rank_{rank:05d}.pt")


def write_durably(path: str, write, binary: bool = False) -> None:
    """Write through `write(stream)`, then flush and fsync: on disk before anything names it."""
    with open(path, "wb" if binary else "w") as stream:
        write(stream)
        stream.flush()
        os.fsync(stream.fileno())


def fsync_dir(path: str) -> None:
    """Make a rename or a new entry in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: str) -> None:
    """fsync every file and folder below `folder` (what other writers, DeepSpeed's or megatron's,
    left in the page cache), so that a published checkpoint survives a power cut."""
    for directory, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(directory)


def publish_folder(root: str, name: str, tmp: str) -> str:
    """Make the written folder `tmp` durable, rename it to `root/name` (replacing a folder of that
    name: a run resumed at this step saves it again) and point `latest` at it. One process: the
    frame calls it on rank 0 once every rank's part is written and verified."""
    final = os.path.join(root, name)
    fsync_tree(tmp)
    if os.path.exists(final):
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_dir(root)
    write_latest(root, name)
    return final


def write_latest(root: str, name: str) -> None:
    """Point `latest` at `name` atomically (temp file, fsync, rename, fsync the folder)."""
    tmp = os.path.join(root, f".{LATEST}.tmp")
    write_durably(tmp, lambda stream: stream.write(name + "\n"))
    os.replace(tmp, os.path.join(root, LATEST))
    fsync_dir(root)


def read_latest(root: str):
    """The iter_ name `latest` holds, or None without a `latest` file."""
    path = os.path.join(root, LATEST)
    if not os.path.isfile(path):
        return None
    with open(path) as stream:
        return stream.read().strip()


def list_checkpoints(root: str) -> List[str]:
    """The published iter_ folders of `root`, oldest first."""
    if not os.path.isdir(root):
        return []
    return sorted(d for d in os.listdir(root)
                  if d.startswith("iter_") and os.path.isdir(os.path.join(root, d)))
