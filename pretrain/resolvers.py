"""The run config's own OmegaConf resolvers (registered by pretrain/config.py `register`).

    ${launch_time:%Y-%m-%d_%H-%M-%S}    the default run_dir's time stamp, the same on every rank
    ${run_folder:'/abs/path/of/R'}      resume.yaml's run_dir: the folder it is loaded from now
    ${study_sizes:..} ${study_seeds:..} ${clp_arm:..}   a study's sweep (pretrain/study.py)

Standard library and Hydra only: the schema imports this, and so does everything else.
"""

from __future__ import annotations

import os
from typing import Optional

RESUME_FILE = "resume.yaml"


def launch_time(pattern: str) -> str:
    """The time the run was launched, formatted: under torchrun the start of its agent process, the
    parent of every rank on the node, so that ranks starting in different seconds name the same run
    folder (Hydra's ${now:} is each process's own time); otherwise now. (srun jobs get an explicit
    run_dir from the launcher; multi-node torchrun runs should pass one too.)"""
    import datetime

    started = datetime.datetime.now()
    if "TORCHELASTIC_RUN_ID" in os.environ:
        try:
            with open(f"/proc/{os.getppid()}/stat") as stream:
                ticks = int(stream.read().rsplit(")", 1)[1].split()[19])
            with open("/proc/stat") as stream:
                boot = next(int(line.split()[1]) for line in stream if line.startswith("btime"))
            started = datetime.datetime.fromtimestamp(boot + ticks / os.sysconf("SC_CLK_TCK"))
        except (OSError, ValueError, IndexError, StopIteration):
            pass  # not Linux's /proc: each rank's own time, rank 0's folder wins (train.py)
    return started.strftime(pattern)


def resume_folder() -> Optional[str]:
    """The folder whose resume.yaml Hydra is composing (or composed) this run from, or None: a
    run started from conf/, or composed without Hydra's command line (compose(), tests)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    if f"{hydra.job.config_name}.yaml" != RESUME_FILE:
        return None
    for source in hydra.runtime.config_sources:
        if (source.schema == "file" and source.provider in ("command-line", "main")
                and os.path.isfile(os.path.join(source.path, RESUME_FILE))):
            return os.path.abspath(source.path)
    return None


def run_folder(recorded: str) -> str:
    """resume.yaml's run_dir (pretrain/run_folder.py): where it is loaded from, else `recorded`."""
    return resume_folder() or recorded


def register_resolvers() -> None:
    """Idempotent."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("launch_time", launch_time, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("run_folder", run_folder, replace=True)
    from pretrain.study import register_study_resolvers

    register_study_resolvers()  # a study experiment's sweep and folder names
