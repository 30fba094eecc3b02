"""Move a run between engines: model weights from a DeepSpeed checkpoint into our megatron format and
back, plus the resume entry that loads whichever kind of checkpoint a run points at.

    convert_checkpoint(SRC_ITER_FOLDER, DST_CHECKPOINT_DIR)   # direction from SRC's loopcoder.json
    python -m scripts.convert_checkpoint SRC DST              # the same, as a command

The output is a checkpoint dir `DST/iter_XXXXXXX/` + `DST/latest`, so `checkpoint.dir=DST` (or
`checkpoint.resume=DST`) continues the run under the other engine. It holds the weights (fp32, bit for
bit the source's: under ZeRO the fp32 master partitions, not a bf16 copy), the trainer state (step,
consumed samples, LR schedule, data position), the per-rank RNG files and config.yaml, and is marked
`"weights_only": true`: the Adam moments start from zero after the move (the optimizers' partitioned
layouts differ between ZeRO and megatron), which the first steps' losses show as a small bump.

- deepspeed -> megatron: `iter_X/` in megatron-core dist_checkpointing (torch_dist), model only.
- megatron -> deepspeed: `iter_X/mp_rank_00_model_states.pt` with {"module": state_dict}, the file
  DeepSpeed's loader reads for the weights (DeepSpeed's own `load_checkpoint(load_module_only=True)`
  reads it too under ZeRO 0-2).

Conversion runs in one process (a world of one, TP=PP=1) and never needs DeepSpeed for megatron ->
deepspeed; deepspeed -> megatron uses DeepSpeed's zero_to_fp32 to merge ZeRO partitions.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
from typing import Dict

import torch

from model.config import ConfigError

EXTRA_STATE = "_extra_state"


def checkpoint_engine(path: str) -> str:
    from pretrain import checkpoint
    return checkpoint.read_trainer_state(path).get("engine", "megatron")


def load_for_engine(path: str, engine_name: str, engine, loader, model_fields: dict) -> dict:
    """Resume `engine` from `path` (an iter_ folder): the engine's own full checkpoints, or
    weights-only ones converted from the other engine. A full checkpoint of the other engine is
    refused with the command that converts it."""
    from pretrain import checkpoint

    state = checkpoint.read_trainer_state(path)
    written_by = state.get("engine", "megatron")
    if written_by != engine_name:
        raise ConfigError(
            f"checkpoint {path} was written by engine={written_by} but this run has "
            f"engine={engine_name}; pass engine={written_by}, or convert its weights with "
            f"`python -m scripts.convert_checkpoint {path} NEW_DIR` and resume with "
            f"checkpoint.resume=NEW_DIR")
    if engine_name == "deepspeed":
        from pretrain.deepspeed_engine import load_checkpoint
        return load_checkpoint(path, engine, loader, model_fields)
    if state.get("weights_only"):
        return _load_megatron_weights(path, engine, loader, model_fields, state)
    return checkpoint.load_checkpoint(path, engine, loader, model_fields)


def _load_megatron_weights(path, engine, loader, model_fields, state) -> dict:
    """checkpoint.load_checkpoint without the optimizer (Adam starts from zero)."""
    from megatron.core import dist_checkpointing
    from pretrain import checkpoint

    checkpoint.check_model_fields(path, state["model"], model_fields)
    checkpoint._install_safe_metadata_loading()
    model = checkpoint._unwrapped(engine.model)
    template = {"model": checkpoint._without_empty_extra_state(model.sharded_state_dict())}
    checkpoint._refuse_pickled_objects(template)
    loaded = dist_checkpointing.load(template, path, sharded_strategy=("torch_dist", 1))
    missing, unexpected = model.load_state_dict(loaded["model"], strict=False)
    missing = [key for key in missing if not key.endswith(EXTRA_STATE)]
    if missing or unexpected:
        raise RuntimeError(f"{path}: model keys missing {missing}, unexpected {unexpected}")
    # megatron's optimizer keeps its own fp32 copy only under bf16; refresh it from the weights.
    for optimizer in getattr(engine.optimizer, "chained_optimizers", [engine.optimizer]):
        if hasattr(optimizer, "reload_model_params"):
            optimizer.reload_model_params()
    engine.scheduler.load_state_dict(state["scheduler"])
    loader.load_state_dict(state["data"])
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    rng_file = os.path.join(path, "rng", f"rank_{rank:05d}.pt")
    if os.path.isfile(rng_file):
        checkpoint.set_rng_state(torch.load(rng_file, weights_only=True))
    return state


# -- reading and writing weights of each format --------------------------------------------------
def read_deepspeed_weights(path: str) -> Dict[str, torch.Tensor]:
    """Full fp32 weights of a DeepSpeed checkpoint folder (any ZeRO stage, any world size)."""
    from pretrain.checkpoint import read_trainer_state
    from pretrain.deepspeed_engine import MODEL_FILE, import_deepspeed

    path = os.path.normpath(path)
    state = read_trainer_state(path)
    partitioned = any(name.endswith("optim_states.pt") for name in os.listdir(path))
    if state.get("weights_only") or not partitioned:
        # No ZeRO (or bf16) partitions of fp32 masters: the module file holds the weights.
        module = torch.load(os.path.join(path, MODEL_FILE), map_location="cpu",
                            weights_only=False)["module"]
        return {k: v for k, v in module.items() if not k.endswith(EXTRA_STATE)}
    import_deepspeed()
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    weights = get_fp32_state_dict_from_zero_checkpoint(os.path.dirname(path),
                                                       tag=os.path.basename(path))
    return {k: v.contiguous() for k, v in weights.items() if not k.endswith(EXTRA_STATE)}


def _world_of_one():
    """torch.distributed and megatron's TP=PP=1 state in this process, if not there yet."""
    import model  # noqa: F401  (CPU compatibility layer)
    from megatron.core import parallel_state

    started = not torch.distributed.is_initialized()
    if started:
        torch.distributed.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0,
                                             world_size=1, timeout=datetime.timedelta(minutes=30))
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(1, 1)
    return started


def _model_of(path: str):
    """A PLTModel with the checkpoint's architecture (weights not initialised: they are loaded)."""
    from omegaconf import OmegaConf

    from model import ModelConfig, PLTModel

    resolved = OmegaConf.load(os.path.join(path, "config.yaml"))
    model_cfg: ModelConfig = OmegaConf.to_object(
        OmegaConf.merge(OmegaConf.structured(ModelConfig), resolved.model))
    return PLTModel(model_cfg.build(params_dtype=torch.float32, use_cpu_initialization=True,
                                    perform_initialization=False))


def read_megatron_weights(path: str) -> Dict[str, torch.Tensor]:
    from megatron.core import dist_checkpointing
    from pretrain import checkpoint

    _world_of_one()
    checkpoint._install_safe_metadata_loading()
    model = _model_of(path)
    template = {"model": checkpoint._without_empty_extra_state(model.sharded_state_dict())}
    loaded = dist_checkpointing.load(template, path, sharded_strategy=("torch_dist", 1))
    return {k: v for k, v in loaded["model"].items() if not k.endswith(EXTRA_STATE)}


def _write_megatron_weights(path: str, weights: Dict[str, torch.Tensor], src: str) -> None:
    from megatron.core import dist_checkpointing
    from pretrain import checkpoint

    _world_of_one()
    model = _model_of(src)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [key for key in missing if not key.endswith(EXTRA_STATE)]
    if missing or unexpected:
        raise RuntimeError(f"{src}: weights do not fit the model of its config.yaml: missing "
                           f"{missing}, unexpected {unexpected}")
    state = {"model": checkpoint._without_empty_extra_state(model.sharded_state_dict())}
    dist_checkpointing.save(state, path, sharded_strategy=("torch_dist", 1))


def _write_deepspeed_weights(path: str, weights: Dict[str, torch.Tensor]) -> None:
    from pretrain.deepspeed_engine import MODEL_FILE
    torch.save({"module": weights, "dp_world_size": 1, "mp_world_size": 1},
               os.path.join(path, MODEL_FILE))


# -- the conversion -----------------------------------------------------------------------------
def convert_checkpoint(src: str, dst_root: str) -> str:
    """Convert the iter_ folder `src` (or the `latest` of a checkpoint dir) into the other engine's
    format under `dst_root`; returns the new iter_ folder."""
    from pretrain import checkpoint

    resolved = checkpoint.resolve_resume(src, src)
    if resolved is None or not os.path.isfile(os.path.join(resolved, checkpoint.STATE_FILE)):
        raise ConfigError(f"{src} is not a loopcoder checkpoint (no {checkpoint.STATE_FILE})")
    src = os.path.normpath(resolved)
    state = checkpoint.read_trainer_state(src)
    source_engine = state.get("engine", "megatron")
    target_engine = "megatron" if source_engine == "deepspeed" else "deepspeed"
    if source_engine == "deepspeed":
        weights = read_deepspeed_weights(src)
    else:
        weights = read_megatron_weights(src)

    name = checkpoint.iter_name(state["step"])
    final, tmp = os.path.join(dst_root, name), os.path.join(dst_root, f".tmp_{name}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    if target_engine == "megatron":
        _write_megatron_weights(tmp, weights, src)
    else:
        _write_deepspeed_weights(tmp, weights)
    if os.path.isdir(os.path.join(src, "rng")):
        shutil.copytree(os.path.join(src, "rng"), os.path.join(tmp, "rng"))
    shutil.copy(os.path.join(src, "config.yaml"), os.path.join(tmp, "config.yaml"))
    new_state = {key: value for key, value in state.items() if key != "zero_stage"}
    new_state.update(engine=target_engine, weights_only=True, converted_from=src)
    with open(os.path.join(tmp, checkpoint.STATE_FILE), "w") as stream:
        json.dump(new_state, stream, indent=1)
    if os.path.exists(final):
        shutil.rmtree(final)
    os.replace(tmp, final)
    checkpoint._write_latest(dst_root, name)
    return final
