"""Running the stages: datatrove's LocalPipelineExecutor on this machine, its SlurmPipelineExecutor
on a cluster. Both skip the tasks that left a completion marker (<work>/logs/<stage>/completions/),
so a re-run does only what did not finish.

- local: the stages run one after the other, each with `workers` tasks at a time: processes forked
  from this one (datatrove's default, a fork server, starts a fresh interpreter that imports torch
  and megatron again: measured ~8 CPU-seconds more per run; Megatron-LM's preprocess_data.py forks
  its workers too).
- slurm: one job array per stage, each depending on the one before (afterok), submitted at once;
  the command returns after submitting unless --wait. The settings mirror the training launcher's
  (the `launch` config node): partition, account, qos, time, cpus per task, memory, environment lines,
  extra #SBATCH flags. The jobs run the interpreter that submitted them (its bin folder goes first
  on PATH, as with launch.python="") with this checkout on PYTHONPATH.

Two changes to datatrove's SLURM executor (`ClusterExecutor`): no per-stage merge_stats job (the
finalize stage adds the statistics up itself; datatrove would double the number of jobs), and no
--mem-per-cpu line unless --mem-per-cpu-gb is given (datatrove always asks for 2G per CPU; here,
as with the training launcher's launch.mem, the cluster's default applies unless asked).
"""

import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

from datatrove.executor import LocalPipelineExecutor, SlurmPipelineExecutor
from datatrove.utils.logging import logger

from data.curation.plan import CorpusPlan, PlanError, stage_dir
from data.curation.stages import Stage
from data.errors import DISK_FULL_ERRNOS

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass
class ExecutorSettings:
    kind: str = "local"              # local | slurm
    workers: int = 0                 # local: tasks at a time (0: 1); slurm: array limit (0: none)
    partition: str = ""
    account: str = ""
    qos: str = ""
    time: str = "04:00:00"
    cpus_per_task: int = 1
    mem_per_cpu_gb: int = 0          # 0: the cluster's default
    job_name: str = "corpus"
    env_setup: List[str] = field(default_factory=list)    # shell lines at the top of every job
    sbatch_args: List[str] = field(default_factory=list)  # extra #SBATCH flags, e.g. --constraint=cpu
    wait: bool = False               # slurm: wait for the last stage, then print the statistics
    dry_run: bool = False            # slurm: print the batch scripts, submit nothing

    def check(self) -> None:
        if self.kind not in ("local", "slurm"):
            raise PlanError(f"--executor={self.kind!r}; use local or slurm")
        if self.workers < 0:
            raise PlanError(f"--workers={self.workers} must be >= 0")
        if self.dry_run and self.kind != "slurm":
            raise PlanError("--dry-run shows the SLURM batch scripts: use it with --executor slurm")
        for flag in self.sbatch_args:
            if not flag.startswith("--"):
                raise PlanError(f"--sbatch-arg {flag!r}: give a long sbatch flag, e.g. --constraint=cpu")


# ----------------------------------------------------------------------------- local
def _no_traceback_for_a_full_disk(record) -> None:
    """datatrove logs a failing task's exception with its traceback; a full disk is the user's to
    fix, and the command says so in one paragraph (scripts/process_corpus.py): its log line keeps
    the message only."""
    exception = record["exception"]
    if exception and isinstance(exception.value, OSError) and exception.value.errno in DISK_FULL_ERRNOS:
        record["exception"] = None


def run_local(plan: CorpusPlan, stages: List[Stage], settings: ExecutorSettings) -> Dict[str, float]:
    """Run the stages in order on this machine; {stage: wall seconds}."""
    logger.configure(patcher=_no_traceback_for_a_full_disk)  # kept by the forked task processes
    seconds = {}
    for stage in stages:
        start = time.perf_counter()
        LocalPipelineExecutor(stage.pipeline, tasks=stage.tasks,
                              workers=min(max(settings.workers, 1), stage.tasks),
                              logging_dir=stage_dir(plan, stage.name), start_method="fork").run()
        seconds[stage.name] = time.perf_counter() - start
    return seconds


# ----------------------------------------------------------------------------- slurm
class ClusterExecutor(SlurmPipelineExecutor):
    def launch_merge_stats(self):
        pass  # the finalize stage adds up every stage's per-task statistics

    def get_sbatch_args(self, max_array: int = 1) -> dict:
        args = super().get_sbatch_args(max_array)
        if not self.mem_per_cpu_gb:
            args.pop("mem-per-cpu")
        return args


def _sbatch_dict(settings: ExecutorSettings) -> dict:
    flags = {}
    if settings.account:
        flags["account"] = settings.account
    for flag in settings.sbatch_args:
        key, _, value = flag[2:].partition("=")
        flags[key] = value
    return flags


def _env_command(settings: ExecutorSettings) -> str:
    lines = [
        f"export PATH={os.path.dirname(sys.executable)}:$PATH",  # launch_pickled_pipeline is there
        f"export PYTHONPATH={REPO_ROOT}${{PYTHONPATH:+:$PYTHONPATH}}",
        "export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}",  # tasks share the node's cores
        *settings.env_setup,
    ]
    # Indented like datatrove's template around it, so its dedent applies to every line.
    return "\n        ".join(lines)


def _cluster_executor(plan: CorpusPlan, stage: Stage, settings: ExecutorSettings,
                      depends: "ClusterExecutor" = None) -> ClusterExecutor:
    return ClusterExecutor(
        stage.pipeline, tasks=stage.tasks, time=settings.time, partition=settings.partition,
        cpus_per_task=settings.cpus_per_task, mem_per_cpu_gb=settings.mem_per_cpu_gb,
        workers=settings.workers or -1, job_name=f"{settings.job_name}_{stage.name}",
        qos=settings.qos or None, env_command=_env_command(settings),
        sbatch_args=_sbatch_dict(settings), depends=depends,
        logging_dir=stage_dir(plan, stage.name), tasks_per_job=stage.tasks_per_job,
    )


def submit_slurm(plan: CorpusPlan, stages: List[Stage], settings: ExecutorSettings) -> List[Tuple[str, str]]:
    """Submit every stage with unfinished tasks; [(stage, job id)] (id -1: nothing left to run)."""
    executors, previous = [], None
    for stage in stages:
        previous = _cluster_executor(plan, stage, settings, depends=previous)
        executors.append(previous)
    executors[-1].run()
    return [(stage.name, str(executor.job_id)) for stage, executor in zip(stages, executors)]


def render_slurm(plan: CorpusPlan, stages: List[Stage], settings: ExecutorSettings) -> str:
    """The batch script of every stage as submit_slurm would send it, all tasks included (each
    job also gets --dependency=afterok on the one before); nothing is submitted."""
    scripts = []
    for stage in stages:
        executor = _cluster_executor(plan, stage, settings)
        jobs = math.ceil(stage.tasks / stage.tasks_per_job)
        pickled = executor.logging_dir.resolve_paths("executor.pik")
        scripts.append(f"# stage {stage.name}: {stage.tasks} tasks in {jobs} array jobs\n"
                       + executor.get_launch_file_contents(
                           executor.get_sbatch_args(jobs), f"srun -l -n 1 launch_pickled_pipeline {pickled}"))
    return "\n".join(scripts)


def _queue(job_ids: List[str]) -> List[Tuple[str, str, str]]:
    """(job, state, reason) of the given jobs still known to squeue as pending or running."""
    result = subprocess.run(["squeue", "-h", "-j", ",".join(job_ids), "-o", "%i|%T|%r"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        if "Invalid job id" in result.stderr:
            return []  # all finished long ago and purged
        raise RuntimeError(f"squeue failed: {result.stderr.strip()}")
    return [tuple(line.split("|", 2)) for line in result.stdout.splitlines() if line.strip()]


def wait_slurm(submitted: List[Tuple[str, str]], poll_s: float = 2.0) -> List[str]:
    """Wait until the submitted jobs have left the queue. Jobs that can never start because a stage
    before them failed (DependencyNeverSatisfied) are cancelled; returns their ids."""
    job_ids = [job for _, job in submitted if job != "-1"]
    while job_ids:
        queued = _queue(job_ids)
        if not queued:
            return []
        stuck = sorted({job.split("_")[0] for job, state, reason in queued
                        if state == "PENDING" and "DependencyNeverSatisfied" in reason})
        if stuck:
            subprocess.run(["scancel", *stuck], capture_output=True)
            return stuck
        time.sleep(poll_s)
    return []


def incomplete_tasks(plan: CorpusPlan, stages: List[Stage]) -> Dict[str, List[int]]:
    """{stage: ranks without a completion marker}, for stages with any."""
    missing = {}
    for stage in stages:
        folder = os.path.join(stage_dir(plan, stage.name), "completions")
        done = set(os.listdir(folder)) if os.path.isdir(folder) else set()
        ranks = [rank for rank in range(stage.tasks) if f"{rank:05d}" not in done]
        if ranks:
            missing[stage.name] = ranks
    return missing
