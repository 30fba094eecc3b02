"""A checkpoint folder's own files and its engine's payload: whole (the checkpoint's own files are
there and the payload format's own check passes) and, for a checkpoint without checksums, readable.

    verify_folder(folder, state)             # before publishing (checkpointer.py), before loading
    check_payload_readable(folder, state)    # an older checkpoint: the CRCs inside its archives

`state` is the folder's loopcoder.json; the payload format is the engine table's
(pretrain/engines/__init__.py) for the engine that wrote it.
"""

from __future__ import annotations

import os

import pretrain.checkpoint.files as files
from pretrain.errors import CheckpointError


def _payload_format(folder: str, state: dict):
    from pretrain.engines import engine_of, payload_format

    try:
        return payload_format(engine_of(state))
    except ValueError as error:
        raise CheckpointError(f"{os.path.join(folder, files.STATE_FILE)}: {error}") from None


def verify_folder(folder: str, state: dict) -> None:
    """The checkpoint's own files are there and the engine's payload is whole (its format's
    check)."""
    for required in (files.STATE_FILE, files.CONFIG_FILE):
        if not os.path.isfile(os.path.join(folder, required)):
            raise CheckpointError(f"{folder} is incomplete: {required} is missing")
    _payload_format(folder, state).check_complete(folder, state)


def check_payload_readable(folder: str, state: dict) -> None:
    """For a checkpoint without checksums: the payload's records match their CRCs (megatron's
    tensors inside its shards; DeepSpeed's payload is .pt files, which readable.check_readable
    checks whole)."""
    from pretrain.checkpoint.readable import check_archives_within

    archives = getattr(_payload_format(folder, state), "tensor_archives", None)
    if archives is not None:
        check_archives_within(folder, *archives(folder))
