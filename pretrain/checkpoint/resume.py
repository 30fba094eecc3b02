"""Resuming a run from a checkpoint: which folder, whether it fits this run, and loading it.

    path = resolve_resume(cfg.checkpoint.resume, cfg.checkpoint.dir)    # None: a fresh start
    state = load_checkpoint(path, engine, loader, model_fields)         # every rank

Loading checks, before anything is read into the model: the frame's files and the engine's payload
are whole; the architecture fields equal the config's; the checkpoint was written by this run's
engine (a full checkpoint of the other engine is refused with the command that converts it). Then
the engine restores its payload (the optimizer too, unless the checkpoint holds weights only), and
the frame the LR schedule, the data position and this rank's RNG states. Every refusal is a
ConfigError naming the file, the reason and the way out; nothing on disk is changed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Optional

from model.config import ConfigError
from pretrain.checkpoint import files
from pretrain.checkpoint.errors import CheckpointError
from pretrain.checkpoint.frame import verify_folder
from pretrain.checkpoint.state import load_rng, read_trainer_state
from pretrain.distributed import rank

logger = logging.getLogger(__name__)

# What must match between a checkpoint and the config for the weights to mean the same model.
SHAPE_FIELDS = ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups",
                "ffn_hidden_size", "vocab_size", "num_loops", "shared_kv",
                "untie_embeddings_and_output_weights")


def model_fields_of(model_cfg) -> dict:
    return dataclasses.asdict(model_cfg)


def resolve_resume(resume: str, root: str) -> Optional[str]:
    """The iter_ folder to load: auto -> `<root>/latest` if present; none -> None; else PATH.

    A PATH may be an iter_ folder or a checkpoint dir holding a `latest` file.
    """
    if resume == "none":
        return None
    folder = root if resume == "auto" else resume
    latest = files.read_latest(folder)
    if latest is not None:
        target = os.path.join(folder, latest)
        if not os.path.isdir(target):
            raise ConfigError(f"{os.path.join(folder, files.LATEST)} names {target}, which does not "
                              f"exist; pass checkpoint.resume=PATH of an iter_ folder or "
                              f"checkpoint.resume=none")
        return target
    if resume == "auto":
        return None
    if not os.path.isfile(os.path.join(resume, files.STATE_FILE)):
        raise ConfigError(f"checkpoint.resume={resume!r} is not a loopcoder checkpoint "
                          f"(no {files.STATE_FILE} and no {files.LATEST} file in it)")
    return resume


def resolve_checkpoint(path: str) -> str:
    """An iter_ folder given itself or a checkpoint dir with a `latest` file (the tools' argument)."""
    resolved = resolve_resume(path, path)
    if resolved is None:
        raise ConfigError(f"{path} is not a loopcoder checkpoint (no {files.STATE_FILE} and no "
                          f"{files.LATEST} file)")
    return os.path.normpath(resolved)


def check_model_fields(path: str, saved: dict, config_fields: dict) -> None:
    name = os.path.basename(os.path.normpath(path))
    for key in SHAPE_FIELDS:
        if key in saved and saved[key] != config_fields[key]:
            raise ConfigError(
                f"checkpoint {name} has {key}={saved[key]} but the config says "
                f"{config_fields[key]}; pass model.{key}={saved[key]} or checkpoint.resume=none")


def verify_complete(folder: str) -> dict:
    """Raise CheckpointError naming the file unless `folder` is a whole checkpoint; its state."""
    state = read_trainer_state(folder)
    verify_folder(folder, state)
    return state


def _refuse_damaged(path: str, error: Exception) -> ConfigError:
    parent = os.path.dirname(os.path.normpath(path))
    older = [n for n in files.list_checkpoints(parent) if n < os.path.basename(os.path.normpath(path))]
    hint = f"checkpoint.resume={os.path.join(parent, older[-1])}" if older else ""
    return ConfigError(f"cannot resume from {path}: {error}; pass "
                       f"{hint + ' or ' if hint else ''}checkpoint.resume=none "
                       f"(nothing was overwritten)")


def load_checkpoint(path: str, engine, loader, model_fields: dict) -> dict:
    """Restore the engine's payload, the LR schedule, the data position and this rank's RNG from
    `path`; returns its trainer state. Every rank."""
    try:
        state = verify_complete(path)
    except CheckpointError as error:
        raise _refuse_damaged(path, error) from error
    check_model_fields(path, state["model"], model_fields)
    written_by = state.get("engine", "megatron")
    if written_by != engine.name:
        raise ConfigError(
            f"checkpoint {path} was written by engine={written_by} but this run has "
            f"engine={engine.name}; pass engine={written_by}, or convert its weights with "
            f"`python -m scripts.convert_checkpoint {path} NEW_DIR` and resume with "
            f"checkpoint.resume=NEW_DIR")
    engine.load_payload(path, state, weights_only=bool(state.get("weights_only")))
    engine.scheduler.load_state_dict(state["scheduler"])
    loader.load_state_dict(state["data"])
    rng = files.rng_file(path, rank())
    if os.path.isfile(rng):
        load_rng(rng)
    else:
        logger.warning("%s has no RNG state for rank %d (saved with another world size); "
                       "keeping this run's seeds", path, rank())
    return state
