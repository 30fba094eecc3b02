"""One writer per output: `<output>.lock`, held by the process that runs (or submits and waits
for) the pipeline of that output prefix.

Two runs on one `--output` would run the same tasks twice into one work folder, overwrite each
other's shards and publish a mix. As with the checkpoint folder's lock (pretrain/checkpoint/lock.py),
the lock is an advisory `flock`, which the kernel releases when the holder ends however it ends
(kill -9 included), so a dead run never blocks the next; the file says who holds it, so the
refusal names the holder. A run that ends removes the file. SLURM without --wait: the lock is held
while submitting only; the jobs run after the command has returned.
"""

import datetime
import fcntl
import json
import os
import socket
from contextlib import contextmanager

from data.errors import DataError


class OutputInUse(DataError):
    """Another live process writes this output prefix (exit 3)."""


def lock_path(output_prefix: str) -> str:
    return f"{output_prefix}.lock"


def _holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {holder['pid']} on {holder['host']}, since {holder['since']}"
    except (ValueError, UnicodeDecodeError, KeyError, TypeError):
        return "holder unknown"


def _take(path: str, output_prefix: str) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise OutputInUse(
                f"--output {output_prefix} is being written by another process_corpus ({holder}; "
                f"lock file {path}); two runs on one output would overwrite each other's shards. "
                f"Wait for it to end, stop it, or give this run another --output") from None
        except OSError as error:
            os.close(fd)
            raise OutputInUse(f"cannot lock {path} ({error.strerror}): the file system does not "
                              f"support flock (Lustre: mount with -o flock); put --output on one "
                              f"that does") from None
        # The holder removes the file when it ends: if that happened between our open and our
        # flock, we hold a file nobody else sees; take the new one instead.
        if os.path.exists(path) and os.fstat(fd).st_ino == os.stat(path).st_ino:
            return fd
        os.close(fd)


@contextmanager
def output_lock(output_prefix: str):
    """Hold `<output_prefix>.lock` for the block; OutputInUse when another live process holds it."""
    path = lock_path(output_prefix)
    created = _missing_folders(os.path.dirname(os.path.abspath(path)))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        fd = _take(path, output_prefix)
        try:
            holder = {"host": socket.gethostname(), "pid": os.getpid(),
                      "since": datetime.datetime.now().isoformat(timespec="seconds")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
            yield
        finally:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            os.close(fd)  # closing the descriptor releases the flock
    except BaseException:
        for folder in created:  # a run that failed leaves no empty output folder it made
            try:
                os.rmdir(folder)
            except OSError:
                break  # not empty: the run wrote something there worth keeping
        raise


def _missing_folders(folder: str) -> list:
    """The folders of `folder`'s path that do not exist yet, deepest first."""
    missing = []
    while folder and not os.path.exists(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    return missing
