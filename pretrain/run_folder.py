"""A run folder's config files, and resuming a run folder wherever it is now.

    write_run_config(run_dir, config_yaml, values)  config.yaml and resume.yaml, each atomically
    check_resumed_in_place(run_dir)                 refuse an old resume.yaml that names another folder

resume.yaml is a primary Hydra config (`--config-dir RUN_DIR --config-name resume`). A run folder
gets moved (`mv outputs/R outputs/R2`, to another disk) or copied (to branch an experiment) with
its resume.yaml in it, so the paths that lie inside the run folder are not written as absolute
paths but relative to `run_dir`, and `run_dir` itself is `${run_folder:<where it was written>}`:
the folder the resume.yaml is loaded from (Hydra's `--config-dir`), the recorded path only when it
is composed another way. Re-rooting rather than refusing: a moved folder is the same run (its
checkpoints, metrics and lock move with it) and a copy is a new one that must never write into the
original; in both cases the folder the user named is the one they mean, and there is nothing left
for them to fix. Hydra's own output (hydra.run.dir: the .hydra folder, the log) follows, since it
is `${run_dir}` too. Paths outside the run folder (the data cache, init_from) stay as they were.
"""

from __future__ import annotations

import os
import shlex
from model.config import ConfigError
from pretrain.resolvers import RESUME_FILE, resume_folder
from pretrain.run_files import write_file_atomically

CONFIG_FILE = "config.yaml"


def _quoted(path: str) -> str:
    """A path as an OmegaConf resolver argument: single-quoted, so commas, colons and braces in
    a folder name stay part of it."""
    return "'" + path.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _rooted(values, run_dir: str):
    """`values` with every string that is run_dir or lies inside it written as ${run_dir}/..."""
    if isinstance(values, dict):
        return {key: _rooted(value, run_dir) for key, value in values.items()}
    if isinstance(values, list):
        return [_rooted(value, run_dir) for value in values]
    if isinstance(values, str) and (values == run_dir or values.startswith(run_dir + os.sep)):
        return "${run_dir}" + values[len(run_dir):]
    return values


def resume_config(run_dir: str, config_values: dict, hydra_logging=None) -> str:
    """resume.yaml's text: the run's values as a primary config over the schema, so resuming
    composes this run's config, not the current defaults with a few overrides; paths inside the
    run folder relative to it (module docstring)."""
    from omegaconf import OmegaConf

    run_dir = os.path.abspath(run_dir)
    values = _rooted(config_values, run_dir)
    values["run_dir"] = "${run_folder:" + _quoted(run_dir) + "}"
    hydra = {"run": {"dir": "${run_dir}"}, "job": {"chdir": False}}
    if hydra_logging is not None:  # the console format this run logged in (conf/config.yaml)
        hydra["job_logging"] = {"formatters": hydra_logging}
    resume = OmegaConf.create({"defaults": ["base_config", "_self_"], **values, "hydra": hydra})
    return (f"# Continue this run as it was configured (written at its start); paths inside the\n"
            f"# run folder follow it when it is moved or copied (pretrain/run_folder.py):\n"
            f"#   python -m pretrain.train --config-dir {run_dir} --config-name resume\n"
            + OmegaConf.to_yaml(resume))


def write_run_config(run_dir: str, config_yaml: str, config_values: dict) -> None:
    """config.yaml, the resolved config (what tools read; `config_values`: the same as a dict), and
    resume.yaml; both rewritten at every start, resumes included, so each is replaced atomically:
    a kill or a full disk at that moment leaves the previous file, never a torn one."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    formatters = None
    if HydraConfig.initialized():
        found = HydraConfig.get().job_logging.get("formatters")
        formatters = OmegaConf.to_container(found) if found is not None else None
    write_file_atomically(os.path.join(run_dir, CONFIG_FILE), config_yaml)
    write_file_atomically(os.path.join(run_dir, RESUME_FILE),
                          resume_config(run_dir, config_values, formatters))


def _inside(values, run_dir: str, prefix: str = ""):
    """(dotted key, value) of every string in `values` that is run_dir or lies inside it."""
    if isinstance(values, dict):
        for key, value in values.items():
            yield from _inside(value, run_dir, f"{prefix}{key}.")
    elif isinstance(values, str) and (values == run_dir or values.startswith(run_dir + os.sep)):
        yield prefix[:-1], values


def check_resumed_in_place(cfg) -> None:
    """A resume.yaml written before run_dir followed its folder holds the absolute paths of the
    folder it was written in: loaded from a moved folder it would start a fresh run at step 0 in
    the old place, loaded from a copy it would write into the original. Refused, naming both and
    the overrides that resume where it is now; an explicit run_dir= on the command line is the
    user's choice and stands. `cfg`: the composed run config, run_dir set."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    folder, run_dir = resume_folder(), os.path.abspath(cfg.run_dir)
    if folder is None or os.path.realpath(folder) == os.path.realpath(run_dir):
        return
    overrides = HydraConfig.get().overrides.task
    if any(o.split("=", 1)[0].lstrip("+~") == "run_dir" for o in overrides):
        return
    values = OmegaConf.to_container(cfg, resolve=True)
    fixes = [shlex.quote(f"{key}={folder}{value[len(run_dir):]}") for key, value in _inside(values, run_dir)]
    raise ConfigError(
        f"{os.path.join(folder, RESUME_FILE)} names the run folder {run_dir}, not the folder it "
        f"is in ({folder}): the folder was moved or copied, and resuming would train in {run_dir}. "
        f"To resume where it is now, add to the command: {' '.join(sorted(fixes))} (a resume.yaml "
        f"written by this version follows its folder by itself)")
