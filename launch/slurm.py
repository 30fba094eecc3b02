"""Put `python -m pretrain.train` on a SLURM cluster.

    python -m launch.slurm submit [--dry-run] [hydra overrides]
    python -m launch.slurm submit launch=cpu launch.nodes=2 train.max_steps=50 --dry-run
    python -m launch.slurm submit model=plt_1b launch.nodes=4 launch.partition=gpu launch.chain=3 \\
        train.global_batch_size=256     # 32 ranks (4 nodes x 8 GPUs) split the batch
    python -m launch.slurm submit model.num_loops=1,2,3,4        # a loop sweep: one job per value
    python -m launch.slurm submit launch=cpu +experiment=clp_ablation --dry-run   # one job per cell

`submit` composes the same Hydra config as training (`conf/config.yaml`, `launch` group for the
`launch.*` keys), checks it (the trainer's own validation at the launched world size, the launch
keys, the partition), renders one sbatch script per job (launch/script.py), writes it under
`launch.log_dir` and submits it, plus `launch.chain` follow-up jobs (--dependency=afterany) that
resume from `latest`. `--dry-run` prints the scripts and the sbatch commands instead.

A sweep value (Hydra's `key=a,b,c` syntax, any key) gives one job per value (per combination) with
its own run folder under run_dir, named as `pretrain.train -m` names it (hydra.sweep.subdir:
`<job number>_R<num_loops>` by default). An experiment's own sweep (hydra.sweeper.params) is
expanded the same way: `submit +experiment=clp_ablation --dry-run` renders one job per cell, each
in its `<size>_R<R>_<arm>_s<seed>` folder. Every job trains with an absolute `run_dir` and
`checkpoint.resume=auto`, so a requeued or follow-up job finds its checkpoints.

    python -m launch.slurm cancel-followups JOBID   # (the batch script) cancel JOBID's chained jobs
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import subprocess
import sys
import warnings
from dataclasses import dataclass

from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from launch.script import JobSpec, render
from launch.validate import (LaunchError, check_script, check_workdir, validate_against_cluster,
                             validate_launch)



@dataclass
class PlannedJob:
    spec: JobSpec
    launch: LaunchConfig
    script: str


# --------------------------------------------------------------------------------- overrides
def _parse(overrides: list[str]):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(overrides)


def _path_override(key: str, path: str) -> str:
    # Hydra reads `=`, `,`, spaces, brackets and quotes in a value as syntax, and OmegaConf `${`
    # as an interpolation: quote a path that holds any (in Hydra's quoted strings a backslash
    # escapes a quote, so backslashes before a quote or at the end are doubled).
    if re.fullmatch(r"[\w/.~+-]+", path):
        return f"{key}={path}"
    quoted = re.sub(r'(\\*)("|$)', lambda m: m.group(1) * 2 + ("\\" + m.group(2) if m.group(2) else ""),
                    path).replace("${", "\\${")
    return f'{key}="{quoted}"'


def _is_launch_override(parsed) -> bool:
    return parsed.key_or_group == "launch" or parsed.key_or_group.startswith("launch.")


def expand_sweep(overrides: list[str], declared: list[str] = ()) -> list[list[str]]:
    """One override list per combination of the sweep overrides (`key=a,b,c`), in the order
    Hydra's basic sweeper runs them: the experiment's declared sweep (`declared`, from its
    hydra.sweeper.params) first, then the command line's overrides; a key given in both keeps its
    place and takes the command line's values (`+loop_variant=R1,R2` cuts an experiment's list)."""
    axes = {}
    for parsed in _parse(list(declared) + list(overrides)):
        key = parsed.get_key_element()
        axes[key] = ([f"{key}={value}" for value in parsed.sweep_string_iterator()]
                     if parsed.is_sweep_override() else [parsed.input_line])
    return [list(combo) for combo in itertools.product(*axes.values())]


def _with_hydra_node(overrides: list[str]):
    """The config with its `hydra` node (pretrain.config.compose leaves it out): an experiment's
    sweep (hydra.sweeper.params) and each job's folder name (hydra.sweep.subdir)."""
    compose([])  # the schema and resolvers registered, megatron's import notes silenced
    from hydra import compose as hydra_compose, initialize_config_dir

    from pretrain.config import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides),
                             return_hydra_config=True)


def declared_sweep(overrides: list[str]) -> list[str]:
    """The sweep an experiment declares (`hydra.sweeper.params`, e.g. conf/experiment/
    clp_ablation.yaml's sizes x seeds x loop variants), resolved for the command line's fixed
    overrides (`study.seeds=2`) as `pretrain.train -m` resolves it."""
    fixed = [p.input_line for p in _parse(overrides) if not p.is_sweep_override()]
    params = OmegaConf.select(_with_hydra_node(fixed), "hydra.sweeper.params")
    if not params:
        return []
    return [f"{key}={value}" for key, value in OmegaConf.to_container(params, resolve=True).items()]


def sweep_subdir(overrides: list[str], number: int) -> str:
    """Job `number`'s folder under run_dir: hydra.sweep.subdir (conf/config.yaml's
    <job number>_R<loops>, or the experiment's own, e.g. <size>_R<R>_<arm>_s<seed>)."""
    cfg = _with_hydra_node(list(overrides) + [f"hydra.job.num={number}"])
    return str(OmegaConf.select(cfg, "hydra.sweep.subdir"))


# --------------------------------------------------------------------------------- config
def compose(overrides: list[str]):
    """The training config for these overrides (same files and schema as `pretrain.train`)."""
    with warnings.catch_warnings():  # megatron-core's import-time notes about TE/Apex: not ours
        warnings.simplefilter("ignore")
        from pretrain.config import compose as compose_run_config

    return compose_run_config(overrides)


def launch_config(cfg) -> "LaunchConfig":
    """`launch.*` checked against LaunchConfig (an unknown key or wrong type names the key)."""
    from pretrain.config import LaunchConfig

    resolved = OmegaConf.to_container(cfg, resolve=True)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(LaunchConfig), resolved.get("launch") or {})
    except OmegaConfBaseException as err:
        raise LaunchError(f"launch config: {err}".replace("\n", "; ")) from err
    return OmegaConf.to_object(merged)


def _trainer_validate(cfg, world_size: int) -> None:
    from data.errors import DataError
    from pretrain.config import ConfigError, validate

    try:
        validate(OmegaConf.to_object(cfg), world_size)
    except (ConfigError, DataError) as err:  # DataError: data.* values (DataConfig.validate)
        raise LaunchError(f"{err} (at the launched world size {world_size})") from err


def plan(overrides: list[str], check_cluster: bool = True) -> list[PlannedJob]:
    """Compose, check and render every job of this request. Raises LaunchError before any sbatch."""
    workdir = os.getcwd()
    check_workdir(workdir)
    jobs = expand_sweep(overrides, declared_sweep(overrides))
    base_cfg = compose(jobs[0])
    base_run_dir = os.path.abspath(OmegaConf.to_container(base_cfg, resolve=True)["run_dir"])
    submit_command = " ".join(["python -m launch.slurm submit", *map(shlex.quote, overrides)])
    planned = []
    for number, job_overrides in enumerate(jobs):
        kept = [p.input_line for p in _parse(job_overrides)
                if p.key_or_group not in ("run_dir", "checkpoint.resume")]
        # A sweep job's folder is named as `pretrain.train -m` names it (conf/config.yaml:
        # hydra.sweep.subdir), so tools read SLURM sweeps and local sweeps alike.
        subdir = sweep_subdir(kept, number) if len(jobs) > 1 else ""
        run_dir = os.path.join(base_run_dir, subdir) if subdir else base_run_dir
        pinned = [_path_override("run_dir", run_dir), "checkpoint.resume=auto"]
        cfg = compose(kept + pinned)
        launch = launch_config(cfg)
        validate_launch(launch, cfg.parallel.tp, cfg.parallel.pp,
                        _user_resume(job_overrides, base_cfg))
        if check_cluster:
            validate_against_cluster(launch)
        _trainer_validate(cfg, launch.nodes * launch.gpus_per_node)
        ckpt_dir = os.path.abspath(OmegaConf.to_container(cfg, resolve=True)["checkpoint"]["dir"])
        if len(jobs) > 1 and not ckpt_dir.startswith(run_dir + os.sep):
            raise LaunchError(f"checkpoint.dir={ckpt_dir} is shared by every job of the sweep; keep "
                              f"checkpoint.dir=${{run_dir}}/checkpoints so each job has its own")
        spec = JobSpec(
            job_name=f"{launch.job_name}-{subdir}" if subdir else launch.job_name,
            run_dir=run_dir,
            log_dir=os.path.abspath(launch.log_dir),
            # The trainer never reads launch.*: leave those out of its command line.
            train_overrides=[p.input_line for p in _parse(kept) if not _is_launch_override(p)]
            + pinned,
        )
        python = launch.python or sys.executable
        script = render(launch, spec, python, workdir, submit_command)
        check_script(script)
        planned.append(PlannedJob(spec, launch, script))
    return planned


def _user_resume(job_overrides: list[str], base_cfg) -> str:
    for parsed in _parse(job_overrides):
        if parsed.key_or_group == "checkpoint.resume":
            return str(parsed.value())
    return str(base_cfg.checkpoint.resume)


# --------------------------------------------------------------------------------- sbatch
def sbatch(script_path: str, dependency: str | None = None) -> str:
    argv = ["sbatch", "--parsable"]
    if dependency:
        argv.append(f"--dependency={dependency}")
    result = subprocess.run([*argv, script_path], capture_output=True, text=True)
    if result.returncode != 0:
        raise LaunchError(f"`{' '.join(argv)} {script_path}` failed: {result.stderr.strip()}")
    return result.stdout.strip().split(";")[0]


def submit(overrides: list[str], dry_run: bool = False) -> list[list[str]]:
    """Submit (or print) every job and its follow-ups; returns the job ids, one chain per job."""
    planned = plan(overrides, check_cluster=not dry_run)
    chains = []
    for number, job in enumerate(planned, 1):
        script_path = os.path.join(job.spec.log_dir, f"{job.spec.job_name}.sbatch")
        if dry_run:
            print(f"# ---- job {number}/{len(planned)}: {job.spec.job_name}, run_dir={job.spec.run_dir}")
            print(f"# sbatch {script_path}" + "".join(
                f"\n# sbatch --dependency=afterany:<previous> {script_path}"
                for _ in range(job.launch.chain)))
            print(job.script)
            continue
        os.makedirs(job.spec.log_dir, exist_ok=True)   # sbatch does not create --output's folder
        with open(script_path, "w") as stream:
            stream.write(job.script)
        ids = [sbatch(script_path)]
        for _ in range(job.launch.chain):
            ids.append(sbatch(script_path, dependency=f"afterany:{ids[-1]}"))
        chains.append(ids)
        follow = f" follow-ups {','.join(ids[1:])}" if len(ids) > 1 else ""
        print(f"submitted job {ids[0]} ({job.spec.job_name}){follow} run_dir={job.spec.run_dir} "
              f"log={job.spec.log_dir}/{job.spec.job_name}-{ids[0]}.out")
    return chains


JOB_ID = re.compile(r"[0-9]+(_[0-9]+)?")  # a SLURM job id; an array task's is JOBID_TASK


def followups(job_id: str) -> list[str]:
    """Pending jobs that wait (directly or through each other) on `job_id`."""
    if not JOB_ID.fullmatch(job_id):
        raise LaunchError(f"cancel-followups {job_id!r}: not a SLURM job id; give the number "
                          "sbatch printed (digits, or JOBID_TASK for an array task), e.g. "
                          "$SLURM_JOB_ID")
    try:
        out = subprocess.run(["squeue", "--noheader", "--states=PENDING", "--format=%i|%E"],
                             capture_output=True, text=True, check=True).stdout
    except FileNotFoundError:
        raise LaunchError("cancel-followups: squeue is not installed here; run it on a SLURM "
                          "login or compute node") from None
    except subprocess.CalledProcessError as failed:
        raise LaunchError(f"cancel-followups {job_id}: squeue failed (exit {failed.returncode}: "
                          f"{failed.stderr.strip() or 'no message'}); check the SLURM controller "
                          "and retry") from None
    waits_on = {}
    for line in out.splitlines():
        jid, _, dependency = line.strip().partition("|")
        waits_on[jid] = set(re.findall(r"after\w*:(\d+)", dependency))
    found, frontier = [], {job_id}
    while frontier:
        frontier = {jid for jid, deps in waits_on.items() if deps & frontier and jid not in found}
        found += sorted(frontier)
    return found


def cancel_followups(job_id: str) -> None:
    ids = followups(job_id)
    if ids:
        subprocess.run(["scancel", *ids], check=True)
        print(f"[launch] cancelled the chained follow-up job(s) {', '.join(ids)}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    try:
        if command == "submit":
            dry_run = "--dry-run" in rest
            submit([a for a in rest if a != "--dry-run"], dry_run=dry_run)
        elif command == "cancel-followups" and len(rest) == 1:
            cancel_followups(rest[0])
        else:
            print(f"unknown command {' '.join(argv)!r}\n{__doc__}", file=sys.stderr)
            return 2
    except LaunchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (HydraException, OmegaConfBaseException) as err:  # unknown key, wrong type, bad group
        cause = f" ({err.__cause__})" if err.__cause__ else ""
        print(f"error: config: {err}{cause}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from pretrain.errors import run_tool

    sys.exit(run_tool(main))
