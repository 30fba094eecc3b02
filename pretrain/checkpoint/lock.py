"""One live run per checkpoint folder: `<checkpoint.dir>/.lock`, held by the run's rank 0; one
writer per output folder of a tool (`one_writer`: export_hf, import_hf, convert_checkpoint, and any
tool that writes a folder): `<parent>/.<name>.lock`.

Two runs saving into one folder would delete each other's saves in flight (every save clears the
folder's stale `.tmp_iter_*`) and fight over `latest`. The lock is an advisory `flock` on the file,
which the kernel releases when the holding process ends, however it ends (exit, crash, kill -9): a
dead run never blocks the requeued job that follows it. The file itself is left in place and says
who holds it (host, pid, run folder, SLURM job, since when), so a refused run names the holder.

A run that ends normally removes the file; one that was killed leaves it, harmlessly (the lock
itself is gone). flock works on local file systems and NFSv4; Lustre needs its `flock` mount option
(without it flock fails, and the refusal says so).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
import sys

from pretrain.errors import CheckpointError, disk_is_full

LOCK_FILE = ".lock"


def take_lock(path: str, holder: dict, refusal) -> int:
    """flock `path` (created if missing) and write `holder` into it; the descriptor, held until
    release_lock. Another live holder: raises refusal(its description); no flock: CheckpointError."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            current = _read_holder(fd)
            os.close(fd)
            raise refusal(current) from None
        except OSError as error:
            os.close(fd)
            raise CheckpointError(
                f"cannot lock {path} ({error}): the file system does not support flock "
                f"(Lustre: mount with -o flock); use a folder on one that does") from error
        # The holder unlinks the file when it ends: if that happened between our open and our
        # flock, we hold a lock on a file nobody else will see; open the new one instead.
        if os.path.exists(path) and os.fstat(fd).st_ino == os.stat(path).st_ino:
            break
        os.close(fd)
    holder = dict(holder, host=socket.gethostname(), pid=os.getpid(),
                  slurm_job_id=os.environ.get("SLURM_JOB_ID"),
                  since=datetime.datetime.now().isoformat(timespec="seconds"))
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        os.fsync(fd)
    except BaseException:
        release_lock(path, fd)  # a full disk: no empty lock file is left behind
        raise
    return fd


def release_lock(path: str, fd: int) -> None:
    """Remove the file (a clean end leaves no trace), then release the lock."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    os.close(fd)  # closing the descriptor releases the flock


class FolderLock:
    """Take with `acquire()` (rank 0 only); held until `release()` or the process ends."""

    def __init__(self, root: str, run_dir: str):
        self.root, self.run_dir = root, run_dir
        self.path = os.path.join(root, LOCK_FILE)
        self._fd = None

    def acquire(self) -> None:
        os.makedirs(self.root, exist_ok=True)

        def refusal(holder: str) -> CheckpointError:
            return CheckpointError(
                f"checkpoint.dir={self.root} is in use by another live run ({holder}); two "
                f"runs saving into one folder destroy each other's checkpoints. Wait for it "
                f"to end, stop it, or give this run its own checkpoint.dir")

        self._fd = take_lock(self.path, {"run_dir": self.run_dir}, refusal)

    def release(self) -> None:
        if self._fd is not None:
            release_lock(self.path, self._fd)
            self._fd = None


def output_lock_path(out_dir: str) -> str:
    """`<parent>/.<name>.lock`: beside the output, which may not exist yet or be renamed into place."""
    out_dir = os.path.abspath(out_dir)
    return os.path.join(os.path.dirname(out_dir), f".{os.path.basename(out_dir)}.lock")


@contextlib.contextmanager
def one_writer(out_dir: str, flag: str, error=CheckpointError):
    """Hold the output folder `out_dir` for this process while the block writes it: a second
    writer (another tool, or the same tool twice) is refused with `error` naming the holder, before
    it writes anything. A flock on output_lock_path(out_dir), released however the process ends
    (pretrain/checkpoint/lock.py docstring). `flag`: how the user named the output (`--out`)."""
    path = output_lock_path(out_dir)

    def refusal(holder: str):
        return error(f"{flag} {os.path.abspath(out_dir)} is being written by another live process "
                     f"({holder}); two writers of one output destroy each other's files. Wait for "
                     f"it to end, stop it, or pass another {flag}")

    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = take_lock(path, {"command": " ".join(sys.argv)[:500], "output": out_dir}, refusal)
    except OSError as failure:
        if not disk_is_full(failure, path):
            raise
        raise error(f"cannot write {flag} {os.path.abspath(out_dir)}: no space left on the device "
                    f"for its lock file {path} (nothing was kept there); free space on that disk "
                    f"or pass a {flag} on another") from None
    try:
        yield
    finally:
        release_lock(path, fd)


def _read_holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (ValueError, UnicodeDecodeError):
        return "holder unknown"
    if not isinstance(holder, dict):
        return "holder unknown"
    job = f", SLURM job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
    what = (f"run folder {holder.get('run_dir')}" if "run_dir" in holder
            else f"command {holder.get('command')!r}")
    return f"pid {holder.get('pid')} on {holder.get('host')}, {what}{job}, since {holder.get('since')}"
