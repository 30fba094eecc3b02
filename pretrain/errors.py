"""What can stop a run, and the exit status each class of failure gives (documented in the README).

    0   the run reached train.max_steps
    1   an unexpected error (a bug, a crash): the traceback is printed
    2   a configuration error: an unknown key, a wrong type or value, an impossible combination,
        a checkpoint whose model does not fit the config
    3   a data error: missing or damaged shards, another tokenizer, changed data on resume
    4   a checkpoint error: a damaged or incomplete checkpoint, one that fails its checksums, a
        checkpoint folder held by another live run, a Hugging Face directory that fails its checks
    5   the run diverged: train.max_skipped_steps steps in a row had a non-finite loss or gradient
    75  stopped by SIGUSR1/SIGTERM after saving a checkpoint: requeue me (pretrain/signals.py)

Errors of classes 2-5 are the user's to fix: the trainer and the tools (`run_tool`) print their
one-paragraph message (what is wrong and the fix) without a traceback.
"""

from __future__ import annotations

import os
import sys

EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_DATA = 3
EXIT_CHECKPOINT = 4
EXIT_DIVERGED = 5


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read. Raised on every rank together when writing
    (failure decisions are collective); the message names the folder, the file and the way out."""


class DivergedError(RuntimeError):
    """train.max_skipped_steps steps in a row had a non-finite loss or gradient norm
    (pretrain/trainer.py)."""


def describe_user_error(error: BaseException):
    """(exit status, one-paragraph message) of a user error (classes 2-5), or None for anything
    else (a bug: status 1 with its traceback). Hydra's and OmegaConf's errors (an unknown key, a
    wrong type, a bad override) are configuration errors."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from data.errors import DataConfigError, DataError
    from model.config import ConfigError
    from model.kernels import AttentionBackendUnsupported

    for kind, code, label in ((ConfigError, EXIT_CONFIG, "config error"),
                              (AttentionBackendUnsupported, EXIT_CONFIG, "config error"),
                              (DataConfigError, EXIT_CONFIG, "config error"),
                              (HydraException, EXIT_CONFIG, "config error"),
                              (OmegaConfBaseException, EXIT_CONFIG, "config error"),
                              (DataError, EXIT_DATA, "data error"),
                              (CheckpointError, EXIT_CHECKPOINT, "checkpoint error"),
                              (DivergedError, EXIT_DIVERGED, "stopped")):
        if isinstance(error, kind):
            text = str(error)
            cause = error.__cause__
            if cause is not None and str(cause) and str(cause) not in text:
                text = f"{text} ({cause})"
            return code, f"{label}: " + "; ".join(line.strip() for line in text.splitlines()
                                                   if line.strip())
    return None


NEARLY_FULL_BYTES = 1 << 20


def disk_is_full(error: BaseException, path: str) -> bool:
    """Whether `error` came from a full disk (or quota) under `path`; ask before a cleanup frees
    space. megatron's checkpoint writer reports its workers' errors only as text inside a
    CheckpointException, and torch's zip writer on a full disk says only "unexpected pos": so the
    errno, the message and the space left on that disk are all asked."""
    from data.errors import DISK_FULL_ERRNOS

    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    stats = os.statvfs(existing)
    if stats.f_bavail * stats.f_frsize < NEARLY_FULL_BYTES:
        return True
    while error is not None:
        if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
            return True
        if any(os.strerror(code) in str(error) for code in DISK_FULL_ERRNOS):
            return True
        error = error.__cause__ or error.__context__
    return False


# A tool's arguments are paths: one that is missing or taken is the user's to fix.
PATH_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)


def run_tool(main, argv=None) -> int:
    """Run a tool's `main(argv)` (python -m scripts.X): a user error prints its one paragraph on
    stderr and gives its class's status; a wrong path given on the command line gives 2; anything
    else is a bug and keeps its traceback. main returns an int status (or anything else: 0)."""
    try:
        result = main(argv)
    except PATH_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_CONFIG
    except Exception as error:  # noqa: BLE001 sorted into user errors and bugs
        described = describe_user_error(error)
        if described is None:
            raise
        code, message = described
        print(message, file=sys.stderr)
        return code
    return result if isinstance(result, int) else 0
