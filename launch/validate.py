"""Refuse a bad request before `sbatch`: a job that queues for hours and then dies on a config error
wastes the queue time. Every message names the key, the value and the fix."""

from __future__ import annotations

import shutil
import subprocess


class LaunchError(ValueError):
    pass


def validate_launch(launch, tp: int, pp: int, resume: str) -> None:
    """The `launch.*` keys on their own and against `parallel.*` (no cluster needed)."""

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise LaunchError(message)

    need(launch.nodes >= 1, f"launch.nodes={launch.nodes}; a job needs at least 1 node")
    need(launch.gpus_per_node >= 1,
         f"launch.gpus_per_node={launch.gpus_per_node}; at least 1 process per node")
    need(launch.accelerator in ("gpu", "cpu"),
         f"launch.accelerator={launch.accelerator!r}; use gpu or cpu")
    world = launch.nodes * launch.gpus_per_node
    need(world % (tp * pp) == 0,
         f"launch.nodes * launch.gpus_per_node = {launch.nodes} * {launch.gpus_per_node} = {world} "
         f"ranks is not divisible by parallel.tp * parallel.pp = {tp} * {pp} = {tp * pp}; use a "
         f"world size that is a multiple of {tp * pp} or change parallel.tp/pp")
    # Megatron orders ranks TP-fastest: a TP group is `tp` consecutive ranks. If gpus_per_node is not
    # a multiple of tp, some TP groups straddle two nodes and every layer's all-reduce crosses the
    # network instead of NVLink.
    need(launch.gpus_per_node % tp == 0,
         f"launch.gpus_per_node={launch.gpus_per_node} is not a multiple of parallel.tp={tp}: "
         f"tensor-parallel groups would span nodes; use parallel.tp in the divisors of "
         f"{launch.gpus_per_node}")
    need(launch.signal_grace_s >= 0, f"launch.signal_grace_s={launch.signal_grace_s}; use >= 0")
    need(launch.chain >= 0, f"launch.chain={launch.chain}; the number of follow-up jobs is >= 0")
    need(bool(launch.time), "launch.time is empty; give a limit such as 04:00:00")
    need(bool(launch.job_name) and not any(c.isspace() for c in launch.job_name),
         f"launch.job_name={launch.job_name!r}; use a name without spaces")
    # A requeued job or a follow-up job must continue where the last one stopped.
    need(resume == "auto",
         f"checkpoint.resume={resume!r}, but a SLURM job must continue from <checkpoint.dir>/latest "
         f"when it is requeued or followed up; use checkpoint.resume=auto (copy a checkpoint into "
         f"checkpoint.dir to start from it)")


def _scontrol_lines(*args: str) -> list[str]:
    result = subprocess.run(["scontrol", *args], capture_output=True, text=True)
    if result.returncode != 0:
        return []
    return [line for line in result.stdout.splitlines() if line.strip()]


def partitions() -> dict[str, int]:
    """{partition name: total nodes} from slurmctld."""
    out = {}
    for line in _scontrol_lines("show", "partition", "-o"):
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if "PartitionName" in fields:
            out[fields["PartitionName"]] = int(fields.get("TotalNodes", "0") or 0)
    return out


def validate_against_cluster(launch) -> None:
    """The partition exists and holds launch.nodes nodes. Needs scontrol (a login node)."""
    if shutil.which("scontrol") is None:
        raise LaunchError("scontrol is not on PATH: submit from a SLURM login node (or pass "
                          "--dry-run to only print the script)")
    available = partitions()
    if not available:
        raise LaunchError("`scontrol show partition` listed no partitions: is slurmctld reachable "
                          "(SLURM_CONF)?")
    if launch.partition:
        if launch.partition not in available:
            raise LaunchError(f"launch.partition={launch.partition!r} does not exist on this cluster; "
                              f"partitions: {', '.join(sorted(available))}")
        total = available[launch.partition]
        if launch.nodes > total:
            raise LaunchError(f"launch.nodes={launch.nodes} but partition {launch.partition!r} has "
                              f"{total} node(s)")
