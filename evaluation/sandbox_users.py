"""Unprivileged users for the sandboxes of a root harness, leased across processes.

    with lease_user(hint=slot) as uid:      # SANDBOX_UID_BASE + i, exclusively ours
        ... run the sandbox as uid ...      # on leaving, every process of uid is killed

A root harness runs each sandbox as a uid of its own: rlimits on processes do not bind root, and
such a uid owns nothing it could write. Two sandboxes must never share a uid at once (the process
limit counts per uid, and the end of a run kills every process of its uid), also when several
harnesses share a machine (two evaluations, the runs of a sweep, pytest workers). So a run leases
its uid: an exclusive flock on LOCK_DIR/<uid>.lock, released only once no process of that uid is
left. The lock dies with its holder, so a killed harness leaks no lease.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import stat
import time
from typing import Dict, Iterator, List

# Far above any account's uid and outside systemd's dynamic-user range: no file or process of the
# machine belongs to one of these.
SANDBOX_UID_BASE = 2_100_000_000
MAX_USERS = 4096
LOCK_DIR = "/run/loopcoder-sandbox"


def _lock_dir() -> str:
    os.makedirs(LOCK_DIR, mode=0o700, exist_ok=True)
    info = os.lstat(LOCK_DIR)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o022:
        raise RuntimeError(f"{LOCK_DIR} must be a folder owned by root that others cannot write "
                           f"(mode {oct(info.st_mode)}, owner {info.st_uid}); remove it and retry")
    return LOCK_DIR


def _try_lock(uid: int):
    """An open, exclusively locked descriptor of uid's lock file, or None if another holds it."""
    fd = os.open(os.path.join(_lock_dir(), f"{uid}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except BlockingIOError:
        os.close(fd)
        return None


@contextlib.contextmanager
def lease_user(hint: int = 0) -> Iterator[int]:
    for offset in range(MAX_USERS):
        uid = SANDBOX_UID_BASE + (hint + offset) % MAX_USERS
        fd = _try_lock(uid)
        if fd is None:
            continue
        try:
            kill_user_processes(uid)  # left by a harness that died mid-run
            yield uid
        finally:
            try:
                kill_user_processes(uid)
            finally:
                os.close(fd)  # releases the lease
        return
    raise RuntimeError(f"all {MAX_USERS} sandbox users are leased: lower --workers or wait for "
                       "the other evaluations on this machine")


def sandbox_user_processes() -> Dict[int, List[int]]:
    """{uid: pids} of every process run by a sandbox user."""
    found: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                uid = os.stat(f"/proc/{entry}").st_uid
            except FileNotFoundError:
                continue
            if 0 <= uid - SANDBOX_UID_BASE < MAX_USERS:
                found.setdefault(uid, []).append(int(entry))
    return found


def leftover_processes() -> Dict[int, List[int]]:
    """Processes of sandbox users that no run holds a lease on: what a sandbox left behind."""
    leftovers = {}
    for uid, pids in sandbox_user_processes().items():
        fd = _try_lock(uid)
        if fd is not None:
            os.close(fd)
            leftovers[uid] = pids
    return leftovers


def kill_user_processes(uid: int, patience_s: float = 5.0) -> None:
    """SIGKILL every process owned by ``uid`` until none is left (root only). A process in the
    middle of its namespace's teardown can take a second to go."""
    deadline = time.monotonic() + patience_s
    while True:
        pids = sandbox_user_processes().get(uid, [])
        if not pids:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {pids} of sandbox uid {uid} survived SIGKILL for "
                               f"{patience_s} s; look at them with `ps -o pid,stat,cmd -p "
                               f"{','.join(map(str, pids[:10]))}`")
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.005)
