"""The file-system side of the Checkpointer: names, durable writes, `latest`, the listing.

    <checkpoint.dir>/latest          one line, e.g. "iter_0000200"; replaced atomically
    <checkpoint.dir>/iter_0000200/   a published checkpoint
    <checkpoint.dir>/.tmp_iter_0000200/   one being written (never read as a checkpoint)
"""

from __future__ import annotations

import logging
import os
import re
from typing import List

from pretrain.errors import CheckpointError

logger = logging.getLogger(__name__)
ITER_PATTERN = re.compile(r"iter_[0-9]{7}")
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


def write_latest(root: str, name: str) -> None:
    """Point `latest` at `name` atomically (temp file, fsync, rename, fsync the folder)."""
    tmp = os.path.join(root, f".{LATEST}.tmp")
    write_durably(tmp, lambda stream: stream.write(name + "\n"))
    os.replace(tmp, os.path.join(root, LATEST))
    fsync_dir(root)


def read_latest(root: str):
    """The iter_ name `latest` holds, or None without a `latest` file. It must name a checkpoint
    of this folder: a name of the iter_XXXXXXX form, a real folder beside `latest` (not a symlink,
    not a path): a `latest` written by hand as `../../other_run/ckpt/iter_...`, an absolute path
    or a symlink out of the folder would resume another run's checkpoint as this run's own."""
    path = os.path.join(root, LATEST)
    if not os.path.lexists(path):
        return None
    try:
        with open(path, "rb") as stream:
            name = stream.read(4096).decode("utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} cannot be read ({error}); pass checkpoint.resume=PATH of "
                              f"the iter_ folder to resume, or checkpoint.resume=none") from None
    target = os.path.join(root, name)
    if not ITER_PATTERN.fullmatch(name) or (
            os.path.lexists(target) and (os.path.islink(target) or os.path.realpath(
                os.path.dirname(os.path.realpath(target))) != os.path.realpath(root))):
        raise CheckpointError(
            f"{path} names {name[:200]!r}, which is not a checkpoint of this folder (latest holds "
            f"the name of an iter_XXXXXXX folder beside it, not a path or a link out of the "
            f"folder: it would resume another run's checkpoint as this one's); write the name of "
            f"one of {list_checkpoints(root)} into it, or pass checkpoint.resume=PATH to resume "
            f"another checkpoint on purpose")
    return name


# iter_ folders whose name is not iter_<7 digits> (an `iter_backup/` a user made): warned about once
# per process, then ignored: never resumed, never set aside, never deleted by retention. Refusing
# them would stop a run for a folder that harms nothing; reading them would guess a step.
_warned_strays = set()


def list_checkpoints(root: str) -> List[str]:
    """The published iter_ folders of `root`, oldest first (stray iter_* folders: see above)."""
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        if not name.startswith("iter_") or not os.path.isdir(os.path.join(root, name)):
            continue
        if ITER_PATTERN.fullmatch(name):
            found.append(name)
        elif os.path.join(root, name) not in _warned_strays:
            _warned_strays.add(os.path.join(root, name))
            logger.warning("%s is not a checkpoint name (iter_ and 7 digits); ignored: never "
                           "resumed, set aside or deleted by retention. Rename or move it if it "
                           "is a checkpoint", os.path.join(root, name))
    return sorted(found)
