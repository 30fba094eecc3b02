"""A real SLURM cluster on this one machine, for tests: munged, slurmctld and two slurmd's (n1, n2).

Debian's slurm-wlm is built with multiple-slurmd support, so two `slurmd -N n1` / `slurmd -N n2`
daemons on 127.0.0.1 (each with its own port) act as a 2-node cluster: `sbatch -N2` gets two
"nodes", `srun` starts one task on each, and the job sees SLURM_JOB_NODELIST=n[1-2], exactly as on
a real cluster. Nothing is installed system-wide except the Debian packages; every file (munge key,
slurm.conf, state, logs) lives under one folder, and the daemons are stopped by PID.

    python -m tests.local_cluster up [--root DIR]    # prints `export SLURM_CONF=...`
    python -m tests.local_cluster down [--root DIR]

In tests: `with LocalCluster(root) as cluster: subprocess.run(["sbatch", ...], env=cluster.env)`.
The fixture path runs the daemons in the foreground (-D / -F) as children of the test process, so
stopping them reaps them (this VM's PID 1 does not reap orphans: detached daemons stay as zombies).
"""

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
BINARIES = ["slurmctld", "slurmd", "sbatch", "scontrol", "munged", "mungekey"]
NODES = ("n1", "n2")
PARTITION = "debug"


class ClusterUnavailable(RuntimeError):
    """SLURM is not installed and cannot be installed here (not root, or no apt-get)."""


def _which(name: str) -> str | None:
    # munged/slurmd live in /usr/sbin, which is not on every root PATH (e.g. some CI images).
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")


def ensure_installed() -> None:
    """apt-get install the SLURM daemons, client and munge when any binary is missing (~10-20 s)."""
    missing = [b for b in BINARIES if _which(b) is None]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ClusterUnavailable(
            f"SLURM binaries {missing} are missing and this is not a root Debian machine; install "
            f"them with `apt-get install -y --no-install-recommends {' '.join(PACKAGES)}`"
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        # A fresh image has empty package lists: update once, then retry.
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=True)
        result = subprocess.run(install, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise ClusterUnavailable(f"`{' '.join(install)}` failed:\n{result.stderr[-2000:]}")
    still_missing = [b for b in BINARIES if _which(b) is None]
    if still_missing:
        raise ClusterUnavailable(f"installed {PACKAGES} but {still_missing} are still not found")


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def render_slurm_conf(root: Path, munge_socket: Path, ctld_port: int, node_ports: list[int],
                      cpus_per_node: int) -> str:
    node_lines = "\n".join(
        f"NodeName={name} NodeHostname=localhost NodeAddr=127.0.0.1 Port={port} "
        f"CPUs={cpus_per_node} State=UNKNOWN"
        for name, port in zip(NODES, node_ports)
    )
    return f"""\
# Written by tests/local_cluster.py: a 2-node SLURM cluster emulated on one host.
ClusterName=loopcoder-test
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmUser=root
SlurmdUser=root
# cred_expire also sets how long a requeued job waits before it may start again (default ~121 s).
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket},cred_expire=5
# No systemd and no cgroups on this kind of machine.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
# Look at the queue every second (defaults: 60 s / 30 s), so a requeued job restarts as soon as
# cred_expire allows instead of at the next periodic pass.
SchedulerParameters=sched_interval=1,bf_interval=1
# No accounting daemon: finished jobs stay visible to `scontrol show job` for MinJobAge seconds.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=3600
# SLURM's default: what a cancelled or timed-out trainer has to save (a loaded 2-core machine
# needs more than 10 s).
KillWait=30
InactiveLimit=0
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd-%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
{node_lines}
PartitionName={PARTITION} Nodes={','.join(NODES)} Default=YES MaxTime=INFINITE State=UP
"""


class LocalCluster:
    """Start/stop munged + slurmctld + slurmd n1, n2 under `root` (a temp folder by default)."""

    def __init__(self, root: str | os.PathLike | None = None, cpus_per_node: int = 1):
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="loopcoder-slurm-"))
        self.cpus_per_node = cpus_per_node
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self._procs: list[subprocess.Popen] = []

    @property
    def env(self) -> dict:
        """os.environ plus SLURM_CONF (every SLURM client needs it) and /usr/sbin on PATH."""
        path = os.environ.get("PATH", "")
        if "/usr/sbin" not in path.split(os.pathsep):
            path = path + os.pathsep + "/usr/sbin"
        return dict(os.environ, SLURM_CONF=str(self.conf), PATH=path)

    # ----------------------------------------------------------------------------- start / stop
    def start(self, foreground: bool = True, timeout_s: float = 60.0) -> "LocalCluster":
        """Bring the cluster up and wait until both nodes are idle. `foreground` keeps the daemons
        as children of this process (-D/-F), so `stop()` also reaps them."""
        ensure_installed()
        for sub in ("munge", "state", "spool", "run", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        # munged refuses a socket whose folders are group/other-writable; /tmp itself is fine
        # because of its sticky bit.
        for folder in (self.root, self.root / "munge"):
            folder.chmod(0o711)
        key = self.root / "munge" / "munge.key"
        if not key.exists():
            subprocess.run([_which("mungekey"), "--create", f"--keyfile={key}"], check=True,
                           capture_output=True)
        key.chmod(0o600)
        ctld_port, *node_ports = _free_ports(1 + len(NODES))
        self.conf.write_text(render_slurm_conf(self.root, self.munge_socket, ctld_port, node_ports,
                                               self.cpus_per_node))

        fg = ["-F"] if foreground else []
        munge_dir = self.root / "munge"
        self._spawn([_which("munged"), *fg, "--force", f"--key-file={key}",
                     f"--socket={self.munge_socket}", f"--pid-file={munge_dir}/munged.pid",
                     f"--log-file={munge_dir}/munged.log", f"--seed-file={munge_dir}/munged.seed"],
                    "munged", foreground)
        self._wait_for(lambda: self.munge_socket.exists(), timeout_s, "munged socket")

        fg = ["-D"] if foreground else []
        self._spawn([_which("slurmctld"), *fg, "-i", "-f", str(self.conf)], "slurmctld", foreground)
        self._wait_for(self._controller_answers, timeout_s, "slurmctld to answer")
        for name in NODES:
            self._spawn([_which("slurmd"), *fg, "-N", name, "-f", str(self.conf)], f"slurmd-{name}",
                        foreground)
        self._wait_for(self._nodes_idle, timeout_s, f"nodes {NODES} to become idle")
        return self

    def stop(self) -> None:
        """Cancel every job, then stop slurmd's, slurmctld and munged by PID."""
        if self.conf.exists() and _which("scancel"):
            subprocess.run([_which("scancel"), "--full", "--user=root"], env=self.env,
                           capture_output=True, timeout=30)
        pid_files = [self.root / "run" / f"slurmd-{n}.pid" for n in NODES]
        pid_files += [self.root / "run" / "slurmctld.pid", self.root / "munge" / "munged.pid"]
        for proc in reversed(self._procs):  # children first (they reap), in reverse start order
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self._procs.clear()
        for pid_file in pid_files:  # detached daemons (`up` without a foreground parent)
            _kill_pid_file(pid_file)

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ----------------------------------------------------------------------------- helpers
    def _spawn(self, argv: list[str], name: str, foreground: bool) -> None:
        log = open(self.root / "log" / f"{name}.stdout", "ab")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                start_new_session=True)
        log.close()
        if foreground:
            self._procs.append(proc)
        else:
            proc.wait(timeout=30)  # daemonizes: the parent returns at once
            if proc.returncode != 0:
                raise RuntimeError(f"{name} failed to start; see {self.root}/log")

    def _controller_answers(self) -> bool:
        return subprocess.run([_which("scontrol"), "ping"], env=self.env,
                              capture_output=True).returncode == 0

    def _nodes_idle(self) -> bool:
        out = subprocess.run([_which("sinfo"), "-h", "-N", "-o", "%N %t"], env=self.env,
                             capture_output=True, text=True).stdout.split()
        states = dict(zip(out[::2], out[1::2]))
        return all(states.get(n) == "idle" for n in NODES)

    def _wait_for(self, ready, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if ready():
                return
            for proc in self._procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} while waiting "
                                       f"for {what}; logs in {self.root}/log\n{self.log_tail()}")
            time.sleep(0.2)
        raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}; logs in "
                           f"{self.root}/log\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        out = []
        for log in sorted((self.root / "log").glob("*")) + [self.root / "munge" / "munged.log"]:
            if log.exists():
                tail = log.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {log}\n" + "\n".join(tail))
        return "\n".join(out)


def _kill_pid_file(pid_file: Path, timeout_s: float = 15.0) -> None:
    try:
        pid = int(pid_file.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return
    try:
        os.kill(pid, 15)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        if Path(f"/proc/{pid}/stat").exists() and " Z " in Path(f"/proc/{pid}/stat").read_text():
            return  # a zombie: gone in all but name (see the module docstring)
        time.sleep(0.1)
    os.kill(pid, 9)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.local_cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--root", default=os.path.join(tempfile.gettempdir(), "loopcoder-slurm"))
    args = parser.parse_args(argv)
    cluster = LocalCluster(args.root)
    if args.action == "up":
        cluster.start(foreground=False)
        print(f"export SLURM_CONF={cluster.conf}")
    else:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
