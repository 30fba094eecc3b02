"""Refuse a bad request before `sbatch`: a job that queues for hours and then dies on a config error
wastes the queue time. Every message names the key, the value and the fix.

Every value that lands in the batch script is checked for where it lands (launch/script.py quotes
it there): an `#SBATCH` line is read by sbatch and ends at a newline, after which bash runs the rest
as a command, so no value there may hold a control character; names SLURM knows (partition,
account, qos, job name) keep to SLURM's characters, and the job name also names the script file;
`launch.env_setup` is shell by design, so each line must parse on its own (`bash -n`).
"""

from __future__ import annotations

import re
import shutil
import subprocess


class LaunchError(ValueError):
    pass


CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # newline, carriage return, tab, escape, ...
SLURM_NAMES = re.compile(r"[A-Za-z0-9_.+-]+(,[A-Za-z0-9_.+-]+)*")  # a name or a comma list
JOB_NAME = re.compile(r"[A-Za-z0-9_.+-]+")
MEMORY = re.compile(r"\d+[KMGT]?", re.IGNORECASE)
# minutes | minutes:seconds | hours:minutes:seconds | days-hours[:minutes[:seconds]] (sbatch --time)
TIME = re.compile(r"(\d+-)?\d+(:\d+){0,2}|UNLIMITED|INFINITE", re.IGNORECASE)


def _one_line(key: str, value: str, lands: str) -> None:
    if CONTROL.search(value):
        raise LaunchError(f"{key}={value!r} holds a control character (a newline, tab, ...); it lands "
                          f"{lands}, where a newline would end the line and start a shell command: "
                          f"remove it")


def _bash_parses(code: str) -> str:
    """bash's complaint about `code`, or "" when it parses without a warning."""
    result = subprocess.run(["bash", "-n"], input=code, capture_output=True, text=True)
    complaint = "; ".join(line.strip() for line in result.stderr.splitlines() if line.strip())
    return complaint or (f"bash -n exit status {result.returncode}" if result.returncode else "")


def check_script(script: str) -> None:
    """The rendered batch script parses (bash -n). Everything in it is quoted for where it lands, so
    a failure here is a bug in launch/script.py: refuse to submit rather than queue a broken job."""
    if shutil.which("bash") is None:
        return
    complaint = _bash_parses(script)
    if complaint:
        raise LaunchError(f"the rendered batch script does not parse ({complaint}); not submitted. "
                          f"Run with --dry-run to see it, and report it as a launcher bug")


def check_workdir(workdir: str) -> None:
    _one_line("the working directory", workdir, "on the #SBATCH --chdir line (submit from a "
              "folder whose path has no control character)")


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
    need(bool(TIME.fullmatch(launch.time)),
         f"launch.time={launch.time!r}; give a SLURM time limit such as 04:00:00, 90 (minutes) or "
         f"2-00:00:00 (days-hours:minutes:seconds)")
    need(bool(JOB_NAME.fullmatch(launch.job_name)),
         f"launch.job_name={launch.job_name!r}; it names the job and its script file "
         f"(<launch.log_dir>/<job_name>.sbatch): use letters, digits and . _ + - only")
    for key in ("partition", "account", "qos"):
        value = getattr(launch, key)
        need(not value or bool(SLURM_NAMES.fullmatch(value)),
             f"launch.{key}={value!r}; a SLURM {key} name (or a comma list) of letters, digits and "
             f". _ + - only")
    need(not launch.mem or bool(MEMORY.fullmatch(launch.mem)),
         f"launch.mem={launch.mem!r}; give a size per node such as 400G, 64000 (MB) or 0 (all)")
    _one_line("launch.log_dir", launch.log_dir, "on the #SBATCH --output line (it is "
              "<run_dir>/slurm by default: check run_dir too)")
    _one_line("launch.python", launch.python, "on the trainer's command line")
    for key in ("sbatch_args", "srun_args"):
        for flag in getattr(launch, key):
            _one_line(f"launch.{key} entry", flag, "in the batch script")
            need(flag.startswith("-"), f"launch.{key} entry {flag!r}; each entry is one flag, such "
                                       f"as --constraint=h100")
    if shutil.which("bash") is not None:
        for line in launch.env_setup:
            complaint = ("it ends with a backslash, which would join the next line to it"
                         if line.rstrip(" \t").endswith("\\") else _bash_parses(line))
            need(not complaint,
                 f"launch.env_setup entry {line!r} is not a complete shell command on its own "
                 f"({complaint}); each entry must parse by itself (bash -n): close its quotes, "
                 f"if/fi, loops and here-documents within the entry")
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
