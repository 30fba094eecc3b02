"""The DeepSpeed engine's checkpoint payload: DeepSpeed's own files inside our iter_ folder.

    mp_rank_00_model_states.pt                       the module (ZeRO 0-2) + DeepSpeed's bookkeeping
    zero_pp_rank_<r>_mp_rank_00_model_states.pt      ZeRO-3: one per data-parallel rank
    [bf16_]zero_pp_rank_<r>_mp_rank_00_optim_states.pt   ZeRO >= 1: partitions of fp32 weights, Adam

DeepSpeed writes into the Checkpointer's temp folder (save_dir = its parent, tag = its name,
save_latest=False); the Checkpointer (pretrain/checkpoint/checkpointer.py) does the rest. A
weights-only payload (converted from the megatron engine, pretrain/checkpoint/convert.py) is just
the module file with {"module": state_dict}.

DeepSpeed's loaders call torch.load(weights_only=False): a crafted file would run code. Every read
here goes through `weights_only_loading`, which makes those calls weights_only=True, admitting
besides tensors only the data classes DeepSpeed's own files hold (LossScaler, ZeroStageEnum,
fragment_address). A file that needs anything else is refused, naming the class; only
checkpoint.allow_pickle=true (a checkpoint you trust, e.g. from another DeepSpeed setup) lets
DeepSpeed unpickle it as it would.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
from typing import Dict

import torch

from model.config import ConfigError
from pretrain.engines.deepspeed_package import import_deepspeed
from pretrain.errors import CheckpointError

MODEL_FILE = "mp_rank_00_model_states.pt"   # DeepSpeed's name for the (TP rank 0) module file
EXTRA_STATE = "_extra_state"


# The classes DeepSpeed 0.19's checkpoint files pickle besides tensors and containers.
DEEPSPEED_DATA_CLASSES = ("deepspeed.runtime.fp16.loss_scaler.LossScaler",
                          "deepspeed.runtime.zero.config.ZeroStageEnum",
                          "deepspeed.utils.tensor_fragment.fragment_address")


def _data_classes() -> list:
    import importlib

    found = []
    for name in DEEPSPEED_DATA_CLASSES:
        module, _, attribute = name.rpartition(".")
        try:
            found.append(getattr(importlib.import_module(module), attribute))
        except (ImportError, AttributeError):
            continue  # another DeepSpeed version: files that hold it are refused, by name
    return found


def _refuse_pickle(path, what: str) -> CheckpointError:
    return CheckpointError(
        f"{path} holds a pickled {what}, which loopcoder does not unpickle (unpickling can run "
        f"code); if you trust this checkpoint, pass checkpoint.allow_pickle=true "
        f"(scripts.convert_checkpoint, scripts.export_hf: --allow-pickle)")


@contextlib.contextmanager
def weights_only_loading(allow_pickle: bool = False):
    """Within it, torch.load (as DeepSpeed calls it) unpickles no code (module docstring)."""
    if allow_pickle:
        yield
        return
    original = torch.load

    def load(f, *args, **kwargs):
        kwargs["weights_only"] = True
        try:
            with torch.serialization.safe_globals(_data_classes()):
                return original(f, *args, **kwargs)
        except pickle.UnpicklingError as error:
            found = re.search(r"GLOBAL ([\w.]+)", str(error))
            what = found.group(1) if found else "objects beyond tensors"
            raise _refuse_pickle(f, what) from None

    torch.load = load
    try:
        yield
    finally:
        torch.load = original


def check_pickles(folder: str, allow_pickle: bool = False) -> None:
    """Refuse, before any rank reads it, a file of `folder` that pickles a class beyond tensors and
    DeepSpeed's data classes (only each file's small pickle is read, not its tensors). Every rank
    decides alike (rank 0 checks, all raise), so no rank fails alone inside DeepSpeed's collective
    load."""
    from pretrain.collective import on_main

    if allow_pickle:
        return

    def scan():
        for name in sorted(os.listdir(folder)):
            if name.endswith(".pt"):
                path = os.path.join(folder, name)
                unsafe = [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(path)
                          if g not in DEEPSPEED_DATA_CLASSES]
                if unsafe:
                    raise _refuse_pickle(path, unsafe[0])

    on_main(f"cannot load {folder}", scan)


def save(folder: str, ds_engine) -> None:
    """DeepSpeed's save_checkpoint into `folder` (every rank; synchronous)."""
    folder = os.path.normpath(folder)
    ds_engine.save_checkpoint(os.path.dirname(folder), tag=os.path.basename(folder),
                              client_state={}, save_latest=False)


def load(folder: str, ds_engine, saved: dict, zero_stage: int, allow_pickle: bool = False) -> None:
    """Weights and ZeRO optimizer partitions, as DeepSpeed saved them: the same stage and world."""
    folder = os.path.normpath(folder)
    name = os.path.basename(folder)
    saved_stage, saved_world = saved.get("zero_stage"), saved.get("world_size")
    world = torch.distributed.get_world_size()
    if saved_stage != zero_stage or saved_world != world:
        raise ConfigError(
            f"checkpoint {name} was written with deepspeed.zero_stage={saved_stage} on "
            f"{saved_world} processes; this run has zero_stage={zero_stage} on {world}. "
            f"Pass deepspeed.zero_stage={saved_stage} with {saved_world} processes, or "
            f"export the weights (python -m scripts.convert_checkpoint) and resume from them")
    check_pickles(folder, allow_pickle)
    with weights_only_loading(allow_pickle):
        loaded, _ = ds_engine.load_checkpoint(os.path.dirname(folder), tag=name,
                                              load_optimizer_states=True,
                                              load_lr_scheduler_states=False)
    if loaded is None:
        raise CheckpointError(f"DeepSpeed could not load the checkpoint {folder}")


def expected_files(saved: dict) -> list:
    """The payload files a checkpoint of this ZeRO stage and world size has (regexes)."""
    if saved.get("weights_only"):
        return [re.escape(MODEL_FILE)]
    stage, world = saved.get("zero_stage", 0), saved.get("world_size", 1)
    if stage == 3:
        files = [rf"zero_pp_rank_{r}_mp_rank_00_model_states\.pt" for r in range(world)]
    else:
        files = [re.escape(MODEL_FILE)]
    if stage >= 1:
        files += [rf"(bf16_)?zero_pp_rank_{r}_mp_rank_00_optim_states\.pt" for r in range(world)]
    return files


def check_complete(folder: str, saved: dict) -> None:
    present = set(os.listdir(folder))
    for pattern in expected_files(saved):
        if not any(re.fullmatch(pattern, name) for name in present):
            shown = pattern.replace("\\", "").replace("(bf16_)?", "[bf16_]")
            raise CheckpointError(f"{folder} is incomplete: {shown} is missing")


def read_module_file(folder: str) -> Dict[str, torch.Tensor]:
    """The module of a weights-only payload (plain tensors, written by write_weights)."""
    module = torch.load(os.path.join(folder, MODEL_FILE), map_location="cpu",
                        weights_only=True)["module"]
    return {k: v for k, v in module.items() if not k.endswith(EXTRA_STATE)}


def read_weights(folder: str, saved: dict, model_cfg=None,
                 allow_pickle: bool = False) -> Dict[str, torch.Tensor]:
    """Full fp32 weights of a DeepSpeed payload (any ZeRO stage, any world size)."""
    folder = os.path.normpath(folder)
    partitioned = any(name.endswith("optim_states.pt") for name in os.listdir(folder))
    check_pickles(folder, allow_pickle)
    with weights_only_loading(allow_pickle):
        if saved.get("weights_only") or not partitioned:
            # No ZeRO (or bf16) partitions of fp32 masters: the module file holds the weights.
            module = torch.load(os.path.join(folder, MODEL_FILE), map_location="cpu")["module"]
            return {k: v for k, v in module.items() if not k.endswith(EXTRA_STATE)}
        import_deepspeed()
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
        weights = get_fp32_state_dict_from_zero_checkpoint(os.path.dirname(folder),
                                                           tag=os.path.basename(folder))
    return {k: v.contiguous() for k, v in weights.items() if not k.endswith(EXTRA_STATE)}


def write_weights(folder: str, weights: Dict[str, torch.Tensor], model_cfg=None) -> None:
    """A weights-only payload: the module file DeepSpeed's loader (and read_module_file) reads."""
    torch.save({"module": weights, "dp_world_size": 1, "mp_world_size": 1},
               os.path.join(folder, MODEL_FILE))
