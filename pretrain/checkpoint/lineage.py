"""Which checkpoints of a folder belong to the run that writes into it now.

A run that starts in `checkpoint.dir` at step S (resumed from iter_S, or fresh at 0) makes every
checkpoint of that folder past step S an abandoned branch: a rollback (`checkpoint.resume=` an
earlier iteration) or a fresh start (`checkpoint.resume=none`) in a folder that holds a later run.
Left in place they would be counted by retention (which would delete the new run's checkpoints
instead of theirs), collide with the new run's names, and `latest` would still name one of them
until the first save. So, before training starts, they are moved to `<checkpoint.dir>/abandoned/`
(never deleted: the rollback may have been a mistake) and `latest` is pointed at the resumed
checkpoint, or removed on a fresh start. Rank 0 only, holding the folder's lock.
"""

from __future__ import annotations

import datetime
import logging
import os
from typing import List, Optional

import pretrain.checkpoint.files as files
from pretrain.errors import CheckpointError

logger = logging.getLogger(__name__)
ABANDONED_DIR = "abandoned"


def step_of(name: str) -> int:
    return int(name.removeprefix("iter_"))


def set_aside_later_branch(root: str, start_step: int, resumed: Optional[str]) -> List[str]:
    """Move the checkpoints of `root` past `start_step` to root/abandoned/<time>/ and make
    `latest` name the resumed checkpoint (when it lives in `root`) or nothing. Returns the moved
    names."""
    later = [name for name in files.list_checkpoints(root) if step_of(name) > start_step]
    if later:
        when = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        target = os.path.join(root, ABANDONED_DIR, when)
        os.makedirs(target, exist_ok=True)
        for name in later:
            os.replace(os.path.join(root, name), os.path.join(target, name))
        files.fsync_dir(root)
        logger.warning("%s held checkpoints past the start step %d (%s): a later branch of another "
                       "run; moved to %s (delete them when no longer needed)", root, start_step,
                       ", ".join(later), target)
    in_root = (resumed is not None and files.ITER_PATTERN.fullmatch(os.path.basename(
        os.path.normpath(resumed))) is not None
        and os.path.dirname(os.path.normpath(resumed)) == os.path.normpath(root))
    try:
        latest = files.read_latest(root)
    except CheckpointError as error:  # the run resumes what it was told: a bad pointer goes
        logger.warning("%s; it is replaced", error)
        latest = "(invalid)"
    if in_root and latest != os.path.basename(os.path.normpath(resumed)):
        files.write_latest(root, os.path.basename(os.path.normpath(resumed)))
    elif not in_root and latest is not None and not os.path.isdir(os.path.join(root, latest)):
        os.remove(os.path.join(root, files.LATEST))
        files.fsync_dir(root)
    return later
