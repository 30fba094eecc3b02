"""The rendezvous address and port of a SLURM job, and the check that it is not a loopback address.

    MASTER_ADDR=$(python -m pretrain.rendezvous)          # in the sbatch script, before any srun
    MASTER_PORT=$(python -m pretrain.rendezvous --port)

The address is the first host of SLURM_JOB_NODELIST, taken as SLURM's own NodeAddr for it (what
slurmctld uses to reach that node, right on real clusters and on the emulated local one), unless
MASTER_ADDR is already exported (then it is only checked).

The most common multi-node hang: the rendezvous host resolves to a loopback address (Debian's
`127.0.1.1 <hostname>` line in /etc/hosts, or MASTER_ADDR=localhost from a copied template) while the
job spans several nodes. Rank 0 listens on its own loopback, the other nodes dial their own, and every
rank waits in init_process_group until the 30-minute timeout. `check_rendezvous` turns that into an
immediate error. The one legitimate loopback case is several SLURM "nodes" that are all this same host
(multiple slurmd's on one machine, as in tests/local_cluster.py): allowed, since every rank is here.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys


class RendezvousError(RuntimeError):
    pass


def _scontrol(*args: str) -> str:
    return subprocess.run(["scontrol", *args], check=True, capture_output=True, text=True).stdout


def job_nodes(nodelist: str) -> list[str]:
    """`n[1-2],gpu07` -> ['n1', 'n2', 'gpu07'] (scontrol expands SLURM's host-list syntax)."""
    return _scontrol("show", "hostnames", nodelist).split()


def node_address(node: str) -> str:
    """The NodeAddr slurmctld uses for `node` (defaults to the node name itself)."""
    for field in _scontrol("show", "node", node, "-o").split():
        if field.startswith("NodeAddr="):
            return field.split("=", 1)[1]
    return node


def resolve(host: str) -> set[str]:
    try:
        return {info[4][0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
    except socket.gaierror as err:
        raise RendezvousError(f"rendezvous host {host!r} does not resolve on {socket.gethostname()}: "
                              f"{err}") from err


def is_loopback(host: str) -> bool:
    return any(ipaddress.ip_address(ip.split("%")[0]).is_loopback for ip in resolve(host))


def check_rendezvous(master_addr: str, nnodes: int, node_addrs: list[str] | None) -> None:
    """Raise RendezvousError if a job of `nnodes` > 1 would rendezvous on a loopback address.

    `node_addrs`: the addresses of every node of the job (None: unknown, then loopback is always an
    error for a multi-node job)."""
    if nnodes <= 1 or not is_loopback(master_addr):
        return
    shown = ", ".join(sorted(resolve(master_addr)))
    if node_addrs:
        # Emulated nodes (several slurmd's on one host) share one address: every rank is local.
        if all(resolve(addr) == resolve(master_addr) for addr in node_addrs):
            return
        others = ", ".join(f"{a} ({', '.join(sorted(resolve(a)))})" for a in node_addrs)
        where = f"; the job's nodes are {others}"
    else:
        where = ""
    raise RendezvousError(
        f"rendezvous host {master_addr!r} resolves to loopback {shown} but this job spans "
        f"SLURM_NNODES={nnodes} nodes{where}: ranks on the other nodes would dial their own loopback "
        f"and hang in init_process_group. Fix the host's /etc/hosts entry (a '127.0.1.1 <hostname>' "
        f"line), give the node a routable NodeAddr in slurm.conf, or export MASTER_ADDR=<the first "
        f"node's network address> in launch.env_setup."
    )


def rendezvous_address(env: dict | None = None) -> str:
    """MASTER_ADDR for this job (exported one or the first node's NodeAddr), checked."""
    env = os.environ if env is None else env
    nnodes = int(env.get("SLURM_NNODES") or env.get("SLURM_JOB_NUM_NODES") or 1)
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        raise RendezvousError("SLURM_JOB_NODELIST is not set: run this inside a SLURM job")
    nodes = job_nodes(nodelist)
    node_addrs = [node_address(node) for node in nodes]
    master_addr = env.get("MASTER_ADDR") or node_addrs[0]
    check_rendezvous(master_addr, nnodes, node_addrs)
    return master_addr


def check_environment(env: dict | None = None) -> None:
    """For the trainer, before init_process_group: fail on a loopback MASTER_ADDR in a multi-node
    SLURM job. A no-op outside SLURM or on one node. Uses scontrol when present for the node list."""
    env = os.environ if env is None else env
    nnodes = int(env.get("SLURM_NNODES") or env.get("SLURM_JOB_NUM_NODES") or 1)
    master_addr = env.get("MASTER_ADDR")
    if nnodes <= 1 or not master_addr:
        return
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    try:
        node_addrs = [node_address(n) for n in job_nodes(nodelist)] if nodelist else None
    except (OSError, subprocess.CalledProcessError):
        node_addrs = None
    check_rendezvous(master_addr, nnodes, node_addrs)


def master_port(env: dict | None = None) -> str:
    """MASTER_PORT for this job: the exported one, else one port per job id, so two jobs sharing a
    node do not collide and a requeued job (same id) gets its port back."""
    env = os.environ if env is None else env
    return env.get("MASTER_PORT") or str(20000 + int(env.get("SLURM_JOB_ID", 0)) % 20000)


def slurm_rendezvous() -> tuple[str, str]:
    """(MASTER_ADDR, MASTER_PORT) of an srun-per-rank job, checked."""
    return rendezvous_address(), master_port()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--port"]:
        print(master_port())
        return 0
    try:
        print(rendezvous_address())
    except (RendezvousError, subprocess.CalledProcessError, OSError) as err:
        detail = getattr(err, "stderr", "") or ""
        print(f"[launch] rendezvous check failed: {err} {detail}".strip(), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
