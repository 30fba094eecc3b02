"""Resuming a run from a checkpoint: which folder, whether it is whole and fits this run, and
restoring it. The Checkpointer (pretrain/checkpoint/checkpointer.py: `load()`) runs these steps:

    path = resolve_resume(cfg.checkpoint.resume, cfg.checkpoint.dir)    # None: a fresh start
    state = verify_resumable(path, cfg.checkpoint.verify)               # loopcoder.json, read once
    check_fits(path, state, engine, model_fields, allowed)              # before anything moves
    restore(path, state, engine, loader)                                # every rank

(`load_checkpoint` does the last three in one call, for tools and benchmarks.) Loading checks,
before anything is read into the model: the checkpoint's own files and the engine's payload are
whole; the architecture fields equal the config's; the checkpoint was written by this run's engine
(a full checkpoint of the other engine is refused with the command that converts it). Then the
engine restores its payload (the optimizer too, unless the checkpoint holds weights only), and the
Checkpointer the LR schedule, the data position and this rank's RNG states. Every refusal names the
file, the reason and the way out (a CheckpointError for a damaged checkpoint, a ConfigError for one
that does not fit the config); nothing on disk is changed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Optional

import pretrain.checkpoint.files as files
from model.config import CHANGEABLE_FIELDS, STRUCTURAL_FIELDS, ConfigError
from pretrain.checkpoint.integrity import verify as verify_checksums
from pretrain.checkpoint.payload import check_payload_readable, verify_folder
from pretrain.checkpoint.readable import check_readable
from pretrain.checkpoint.state import load_rng, read_trainer_state
from pretrain.distributed import rank
from pretrain.errors import CheckpointError

logger = logging.getLogger(__name__)


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
            raise CheckpointError(f"{os.path.join(folder, files.LATEST)} names {target}, which "
                                  f"does not exist; pass checkpoint.resume=PATH of an iter_ "
                                  f"folder or checkpoint.resume=none")
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


def check_model_fields(path: str, saved: dict, config_fields: dict, allowed=(),
                       other_way: str = "checkpoint.resume=none") -> None:
    """Refuse a checkpoint whose model computes another function than the config describes,
    naming the field, both values and the fix. `allowed`: changeable fields changed on purpose;
    `other_way`: the fix besides matching the model (another checkpoint)."""
    from model import ModelConfig

    name = os.path.basename(os.path.normpath(path))
    defaults = dataclasses.asdict(ModelConfig())  # fields older checkpoints did not record
    for key in STRUCTURAL_FIELDS + CHANGEABLE_FIELDS:
        old, new = saved.get(key, defaults.get(key)), config_fields.get(key, defaults.get(key))
        if old == new or (key in allowed and key in CHANGEABLE_FIELDS):
            continue
        message = (f"checkpoint {name} has {key}={old} but the config says {new}; pass "
                   f"model.{key}={old} or {other_way}")
        if key in CHANGEABLE_FIELDS:
            message += (f", or checkpoint.allow_model_change=[{key}] to continue the weights "
                        f"trained with {key}={old} under {new} on purpose")
        raise ConfigError(message)
    gated = [saved.get("num_loops", 1) > 1 and saved.get("shared_kv", True),
             config_fields["num_loops"] > 1 and config_fields["shared_kv"]]
    if gated[0] != gated[1]:
        raise ConfigError(f"checkpoint {name} was trained with num_loops={saved.get('num_loops')}, "
                          f"the config says {config_fields['num_loops']}: one has the loops' gate "
                          f"weights and the other does not, so the weights cannot be loaded")


def verify_complete(folder: str, mode: str = "full", collective: bool = True) -> dict:
    """Raise CheckpointError naming the file unless `folder` is a whole checkpoint whose files
    match their checksums (pretrain/checkpoint/integrity.py; every rank together, unless not
    `collective`); its state.

    The checksums are compared before any file is parsed: a damaged file must be named as damaged,
    not fail inside a parser (an unpickler's OverflowError, a JSON error). A checkpoint without
    checksums (an older loopcoder's) gets every check that needs none first
    (pretrain/checkpoint/readable.py)."""
    if not os.path.isfile(os.path.join(folder, files.STATE_FILE)):
        raise CheckpointError(f"{folder} is not a loopcoder checkpoint: {files.STATE_FILE} is "
                              f"missing")
    sealed = verify_checksums(folder, mode, collective)
    if not sealed:
        check_readable(folder)
    state = read_trainer_state(folder)
    verify_folder(folder, state)
    if not sealed:
        check_payload_readable(folder, state)
    return state


def refuse_weights_only(path: str, state: dict) -> None:
    """A checkpoint of weights without a run's state (an import_hf output; a converted checkpoint
    keeps its run's schedule and data position and resumes) cannot be resumed: say what can."""
    missing = [key for key in ("scheduler", "data") if key not in state]
    if missing:
        source = state.get("imported_from") or state.get("converted_from")
        origin = f" (made from {source})" if source else ""
        raise ConfigError(
            f"checkpoint {path} holds model weights only{origin}, no run to resume (its "
            f"{files.STATE_FILE} has no {' and no '.join(missing)} state: no LR schedule, data "
            f"position or optimizer); start a new run from its weights with "
            f"checkpoint.init_from={path} and checkpoint.resume=none, with a checkpoint.dir of "
            f"its own")


def _previous_good(path: str):
    """The newest earlier checkpoint beside `path` whose files are whole (sizes and headers)."""
    parent, name = os.path.dirname(os.path.normpath(path)), os.path.basename(os.path.normpath(path))
    for older in reversed([n for n in files.list_checkpoints(parent) if n < name]):
        folder = os.path.join(parent, older)
        try:
            verify_checksums(folder, "headers", collective=False)  # before anything is parsed
            verify_folder(folder, read_trainer_state(folder))
            return folder
        except (CheckpointError, OSError):
            continue
    return None


def _refuse_damaged(path: str, error: Exception) -> CheckpointError:
    good = _previous_good(path)
    hint = (f"checkpoint.resume={good} (the previous checkpoint whose files are whole) or "
            if good else "")
    return CheckpointError(f"cannot resume from {path}: {error}; pass {hint}"
                           f"checkpoint.resume=none (nothing was overwritten)")


def verify_resumable(path: str, verify: str = "full") -> dict:
    """The state of `path` once its files are whole (else a refusal offering the previous whole
    checkpoint) and it holds a run to resume. Every rank; before anything acts on the checkpoint."""
    try:
        state = verify_complete(path, verify)
    except CheckpointError as error:
        raise _refuse_damaged(path, error) from error
    refuse_weights_only(path, state)
    return state


def check_fits(path: str, state: dict, engine, model_fields: dict, allow_model_change=()) -> None:
    """Refuse (ConfigError, nothing on disk changed) a checkpoint whose model is not the config's
    or that another engine wrote, naming the fix."""
    check_model_fields(path, state["model"], model_fields, allow_model_change)
    from pretrain.engines import engine_of

    written_by = engine_of(state)
    if written_by != engine.name:
        raise ConfigError(
            f"checkpoint {path} was written by engine={written_by} but this run has "
            f"engine={engine.name}; pass engine={written_by}, or convert its weights with "
            f"`python -m scripts.convert_checkpoint {path} NEW_DIR` and resume with "
            f"checkpoint.resume=NEW_DIR")


def restore(path: str, state: dict, engine, loader) -> None:
    """Restore the engine's payload, the LR schedule, the data position and this rank's RNG from
    `path`, whose trainer state `state` was verified (verify_resumable, check_fits). Every rank."""
    engine.load_payload(path, state, weights_only=bool(state.get("weights_only")))
    engine.scheduler.load_state_dict(state["scheduler"])
    loader.load_state_dict(state["data"])
    rng = files.rng_file(path, rank())
    if os.path.isfile(rng):
        load_rng(rng)
    else:
        logger.warning("%s has no RNG state for rank %d (saved with another world size); "
                       "keeping this run's seeds", path, rank())


def load_checkpoint(path: str, engine, loader, model_fields: dict, *, verify: str = "full",
                    allow_model_change=()) -> dict:
    """Verify `path`, check that it fits, restore it; returns its trainer state. Every rank."""
    state = verify_resumable(path, verify)
    check_fits(path, state, engine, model_fields, allow_model_change)
    restore(path, state, engine, loader)
    return state
