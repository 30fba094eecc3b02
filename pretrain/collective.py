"""Failure decisions made by all ranks together: no rank raises while the others wait in a collective.

    collectively(what, fn)      every rank runs fn; if it failed anywhere, all raise CheckpointError
    on_main(what, fn)           rank 0 runs fn; all get its result, or all raise its error
    on_each_rank(what, fn)      every rank runs fn (-> dict); all get the merged dicts, or all raise

Each takes `what` (the message's start: what could not be done) and raises CheckpointError with the
failing rank's own message, on every rank.
"""

from __future__ import annotations

import logging

from pretrain.distributed import all_reduce_max, broadcast_object, is_main, rank
from pretrain.errors import CheckpointError

logger = logging.getLogger(__name__)


def _attempt(fn):
    try:
        return True, fn()
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as error:  # noqa: BLE001 torch's CheckpointException is a BaseException
        return False, error


def _describe(error: BaseException) -> str:
    return str(error) if isinstance(error, CheckpointError) else f"{type(error).__name__}: {error}"


def collectively(what: str, fn) -> None:
    """Run fn on every rank; if it failed anywhere, every rank raises CheckpointError together."""
    ok, error = _attempt(fn)
    if not ok:
        # On record before the all-reduce: if fn failed on this rank before a collective inside it
        # (megatron's save has barriers), the other ranks wait there and this one here, for good,
        # and this line is then the only word of why (commit e5b6463).
        logger.error("rank %d: %s: %s", rank(), what, _describe(error))
    if all_reduce_max(not ok):
        detail = _describe(error) if not ok else "failed on another rank"
        raise CheckpointError(f"{what} (rank {rank()}: {detail})") from (error if not ok else None)


def on_main(what: str, fn):
    """fn's result on rank 0, handed to every rank; its failure raised on every rank."""
    ok, value = _attempt(fn) if is_main() else (True, None)
    ok, message = broadcast_object((ok, None if ok else _describe(value)))
    if not ok:
        raise CheckpointError(f"{what}: {message}")
    return broadcast_object(value if is_main() else None)


def on_each_rank(what: str, fn) -> dict:
    """fn() -> dict on every rank; the dicts merged on every rank, or every rank raises."""
    import torch

    ok, value = _attempt(fn)
    part = (ok, value if ok else _describe(value))
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        parts = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(parts, part)
    else:
        parts = [part]
    failures = [f"rank {r}: {v}" for r, (good, v) in enumerate(parts) if not good]
    if failures:
        raise CheckpointError(f"{what} ({'; '.join(failures)})")
    merged = {}
    for _, v in parts:
        merged.update(v)
    return merged
