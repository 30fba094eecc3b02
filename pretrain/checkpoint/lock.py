"""One live run per checkpoint folder: `<checkpoint.dir>/.lock`, held by the run's rank 0.

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

import datetime
import fcntl
import json
import os
import socket

from pretrain.errors import CheckpointError

LOCK_FILE = ".lock"


class FolderLock:
    """Take with `acquire()` (rank 0 only); held until `release()` or the process ends."""

    def __init__(self, root: str, run_dir: str):
        self.root, self.run_dir = root, run_dir
        self.path = os.path.join(root, LOCK_FILE)
        self._fd = None

    def acquire(self) -> None:
        os.makedirs(self.root, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise CheckpointError(
                    f"checkpoint.dir={self.root} is in use by another live run ({holder}); two "
                    f"runs saving into one folder destroy each other's checkpoints. Wait for it "
                    f"to end, stop it, or give this run its own checkpoint.dir") from None
            except OSError as error:
                os.close(fd)
                raise CheckpointError(
                    f"cannot lock {self.path} ({error}): the file system does not support flock "
                    f"(Lustre: mount with -o flock); use a checkpoint.dir on one that does") from error
            # The holder unlinks the file when it ends: if that happened between our open and our
            # flock, we hold a lock on a file nobody else will see; open the new one instead.
            if os.path.exists(self.path) and os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                break
            os.close(fd)
        holder = {"host": socket.gethostname(), "pid": os.getpid(), "run_dir": self.run_dir,
                  "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
                  "since": datetime.datetime.now().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        """Remove the file (a clean end leaves no trace) and release the lock."""
        if self._fd is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


def _read_holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (ValueError, UnicodeDecodeError):
        return "holder unknown"
    job = f", SLURM job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
    return (f"pid {holder.get('pid')} on {holder.get('host')}, run folder {holder.get('run_dir')}"
            f"{job}, since {holder.get('since')}")
