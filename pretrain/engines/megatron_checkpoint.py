"""The megatron engine's checkpoint payload: megatron-core dist_checkpointing (torch_dist).

Inside an iter_ folder (the Checkpointer writes the rest: pretrain/checkpoint/checkpointer.py):

    __*.distcp, .metadata, common.pt, metadata.json    the sharded model and optimizer

The model is saved as TP shards keyed by global layer (model/plt_model.py: PLTBlock), the optimizer
per parameter (with the distributed optimizer in megatron-core's `fully_reshardable` format), so a
checkpoint loads under another TP/PP/DP layout.

Loading never unpickles code: tensors come from the dist format, its common state through
`torch.load(weights_only=True)`, and the format's own `.metadata` pickle through an unpickler that
only admits torch's checkpoint metadata classes (`MetadataUnpickler`).
"""

from __future__ import annotations

import io
import os
import pickle
from typing import Dict

import torch

from model.config import ConfigError
from model.unwrap import unwrap
from pretrain.engines.megatron_results_queue import install_results_queue
from pretrain.errors import CheckpointError

EXTRA_STATE = "_extra_state"
STRATEGY = ("torch_dist", 1)
# The files of the format that every checkpoint has (the rest are named in .metadata).
FORMAT_FILES = (".metadata", "common.pt")


# -- safe loading of the dist format's metadata ------------------------------------------------
class MetadataUnpickler(pickle.Unpickler):
    """torch.distributed.checkpoint reads `.metadata` with pickle.load; admit only data classes."""

    ALLOWED_MODULES = ("torch.distributed.checkpoint.",)
    ALLOWED = {("torch", "Size"), ("torch", "device"), ("collections", "OrderedDict"),
               ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "slice"),
               ("torch._utils", "_rebuild_tensor_v2"), ("torch.serialization", "_get_layout"),
               ("torch", "strided")}

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED or module.startswith(self.ALLOWED_MODULES):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name} from a checkpoint's .metadata (only torch's "
            f"checkpoint metadata classes may be unpickled)")


class _SafePickleModule:
    """Stands in for the `pickle` module inside torch.distributed.checkpoint.filesystem."""

    dump, dumps, HIGHEST_PROTOCOL = pickle.dump, pickle.dumps, pickle.HIGHEST_PROTOCOL

    @staticmethod
    def load(file, **kwargs):
        return MetadataUnpickler(file, **kwargs).load()

    @staticmethod
    def loads(data, **kwargs):
        return MetadataUnpickler(io.BytesIO(data), **kwargs).load()


def install_safe_metadata_loading() -> None:
    from torch.distributed.checkpoint import filesystem
    filesystem.pickle = _SafePickleModule


def read_metadata(folder: str):
    with open(os.path.join(folder, ".metadata"), "rb") as stream:
        return MetadataUnpickler(stream).load()


# -- what is saved -------------------------------------------------------------------------------
def model_sharded_state(model) -> dict:
    """The model's sharded state dict without megatron's empty `_extra_state` entries (no Transformer
    Engine fp8): those are ShardedObjects, pickles that torch's planner loads with
    weights_only=False. A layer with real extra state is refused: our checkpoints hold tensors."""
    kept = {}
    for key, value in unwrap(model).sharded_state_dict().items():
        if key.endswith(EXTRA_STATE):
            data = getattr(value, "data", None)
            if data is not None and not (isinstance(data, io.BytesIO) and _is_pickled_none(data)):
                raise RuntimeError(f"model entry {key!r} carries extra state (Transformer Engine "
                                   f"fp8?); loopcoder checkpoints hold tensors only")
            continue
        kept[key] = value
    return kept


def _is_pickled_none(buffer: io.BytesIO) -> bool:
    buffer.seek(0)
    try:
        return MetadataUnpickler(buffer).load() is None
    except pickle.UnpicklingError:
        return False
    finally:
        buffer.seek(0)


def refuse_pickled_objects(sharded_state_dict) -> None:
    """ShardedObjects are stored as pickles and loaded with weights_only=False by torch's planner."""
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    for value in nested_values(sharded_state_dict):
        if isinstance(value, ShardedObject):
            raise RuntimeError(f"checkpoint entry {value.key!r} is a pickled ShardedObject; "
                               f"loopcoder checkpoints hold tensors only")


def _check_distributed_optimizer_loadable(optimizer) -> None:
    """megatron-core 0.16 cannot load a DistributedOptimizer's state without Apex/TE: its state_dict()
    needs a per-parameter Adam `step` that exists only after a first step, and its fully_reshardable
    load then copies `step` from a source that lacks it (KeyError). Say so instead of crashing."""
    from megatron.core.optimizer import distrib_optimizer

    chained = getattr(optimizer, "chained_optimizers", [optimizer])
    if (not distrib_optimizer.HAVE_APEX_OR_TE
            and any(isinstance(o, distrib_optimizer.DistributedOptimizer) for o in chained)):
        raise ConfigError(
            "resuming with parallel.distributed_optimizer=true needs Transformer Engine or Apex "
            "(megatron-core 0.16 cannot load distributed-optimizer state with torch's Adam); install "
            "one, or train with parallel.distributed_optimizer=false")


def sharded_state(model, optimizer, is_loading: bool) -> dict:
    model_state = model_sharded_state(model)
    if optimizer is None:
        return {"model": model_state}
    # Distributed optimizer (parallel.distributed_optimizer): its state in the canonical per-parameter
    # layout (reloadable under another TP/PP/DP). megatron-core 0.16's default,
    # fully_sharded_model_space, fails ("flattened_range is not supported") and dp_reshardable
    # stores pickled ShardedObjects.
    metadata = {"distrib_optim_sharding_type": "fully_reshardable"}
    if is_loading:
        _check_distributed_optimizer_loadable(optimizer)
    optimizer_state = optimizer.sharded_state_dict(model_state, is_loading=is_loading,
                                                   metadata=metadata)
    return {"model": model_state, "optimizer": optimizer_state}


# -- save, load, check ---------------------------------------------------------------------------
def save(folder: str, model, optimizer, async_save: bool = False):
    """dist_checkpointing.save of the model (and optimizer) on every rank; an AsyncRequest with
    async_save, else None once written."""
    from megatron.core import dist_checkpointing

    install_results_queue()
    state = sharded_state(model, optimizer, is_loading=False)
    refuse_pickled_objects(state)
    return dist_checkpointing.save(state, folder, sharded_strategy=STRATEGY,
                                   async_sharded_save=async_save)


def load(folder: str, model, optimizer=None) -> None:
    """Load the model (and the optimizer unless None) from `folder`, resharding to this layout."""
    install_safe_metadata_loading()
    template = sharded_state(model, optimizer, is_loading=True)
    refuse_pickled_objects(template)
    loaded = _load(template, folder)
    _load_model_state(unwrap(model), loaded["model"], folder)
    if optimizer is not None:
        optimizer.load_state_dict(loaded["optimizer"])


def _load(template: dict, folder: str) -> dict:
    """dist_checkpointing.load, with a pickle the format's files should not hold (common.pt is read
    with torch.load's weights_only default) refused as a damaged checkpoint."""
    from megatron.core import dist_checkpointing

    try:
        return dist_checkpointing.load(template, folder, sharded_strategy=STRATEGY)
    except pickle.UnpicklingError as error:
        raise CheckpointError(f"{folder} holds pickled objects loopcoder does not unpickle "
                              f"(unpickling can run code): {error}".split("\n")[0]) from None


def _load_model_state(model, state: dict, folder: str) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [key for key in missing if not key.endswith(EXTRA_STATE)]
    if missing or unexpected:
        raise CheckpointError(f"{folder}: model keys missing {missing}, unexpected {unexpected}")


def _storage(folder: str) -> dict:
    """{relative path of a shard: [(offset, length) of each tensor stored in it]}, from `.metadata`;
    a `.metadata` that cannot be read (damaged: any failure of the unpickler or a result that is not
    the format's metadata) is a CheckpointError naming it."""
    path = os.path.join(folder, ".metadata")
    try:
        metadata = read_metadata(folder)
        tensors = {key for key, value in metadata.state_dict_metadata.items()
                   if hasattr(value, "chunks")}
        items = {}
        for index, info in (metadata.storage_data or {}).items():
            kind = index.fqn in tensors
            items.setdefault(str(info.relative_path), []).append(
                (int(info.offset), int(info.length), kind))
        return items
    except pickle.UnpicklingError as error:
        if "refusing to load" in str(error):  # a crafted class, not damage
            raise CheckpointError(f"{path}: {error}") from None
        raise CheckpointError(f"{path} is damaged and cannot be read ({error})") from None
    except Exception as error:  # noqa: BLE001 a damaged pickle fails in any of a dozen ways
        raise CheckpointError(f"{path} is damaged and cannot be read "
                              f"({type(error).__name__}: {error})".split("\n")[0]) from None


def check_complete(folder: str, saved: dict = None) -> None:
    """Every file the dist format's `.metadata` refers to exists and is long enough: a folder that
    passes holds every rank's part."""
    for required in FORMAT_FILES:
        if not os.path.isfile(os.path.join(folder, required)):
            raise CheckpointError(f"{folder} is incomplete: {required} is missing")
    for relative_path, items in sorted(_storage(folder).items()):
        size = max(offset + length for offset, length, _ in items)
        path = os.path.join(folder, relative_path)
        if not os.path.isfile(path):
            raise CheckpointError(f"{folder} is incomplete: {relative_path} is missing")
        if os.path.getsize(path) < size:
            raise CheckpointError(f"{folder} is incomplete: {relative_path} has "
                                  f"{os.path.getsize(path)} bytes, the metadata needs {size}")


def tensor_archives(folder: str):
    """(".metadata", [(shard, offset, length) of each tensor]): every tensor of the shards is a
    torch.save archive at the place `.metadata` gives, which the checks of a checkpoint without
    checksums read against their CRCs (pretrain/checkpoint/readable.py). After check_complete."""
    return ".metadata", [(relative_path, offset, length)
                         for relative_path, items in sorted(_storage(folder).items())
                         for offset, length, is_tensor in sorted(items) if is_tensor]


# -- whole weights, in one process (conversion, generation, export) ------------------------------
def _bare_model(model_cfg):
    """A PLTModel of `model_cfg` at TP=PP=1, weights not initialised (they are loaded); needs a
    world of one (pretrain.distributed.single_process_world)."""
    import torch

    from model import PLTModel

    return PLTModel(model_cfg.build(params_dtype=torch.float32, use_cpu_initialization=True,
                                    perform_initialization=False))


def read_weights(folder: str, saved: dict, model_cfg,
                 allow_pickle: bool = False) -> Dict[str, torch.Tensor]:
    """The full weights of `folder`, named as a PLTModel at TP=PP=1 of `model_cfg` names them
    (whatever TP/PP layout the checkpoint was written with). The dist format never needs pickle:
    allow_pickle is accepted for the engines' common signature and ignored."""
    install_safe_metadata_loading()
    model = _bare_model(model_cfg)
    own = dict(model.state_dict(keep_vars=True))
    template = model_sharded_state(model)
    # One layer at a time, keeping the model's own tensors: megatron builds SwiGLU's fused fc1 as
    # a new tensor from the two halves it loads in place into the model's, which would otherwise
    # hold every fc1 twice (half a 7B model's weights).
    groups: Dict[str, dict] = {}
    for key, value in template.items():
        groups.setdefault(".".join(key.split(".")[:3]) if key.startswith("decoder.layers.")
                          else "", {})[key] = value
    weights = {}
    for group in groups.values():
        for key, tensor in _load({"model": group}, folder)["model"].items():
            if key.endswith(EXTRA_STATE):
                continue
            mine = own.get(key)
            weights[key] = mine.data if mine is not None and torch.equal(mine, tensor) else tensor
    return weights


def write_weights(folder: str, weights: Dict[str, torch.Tensor], model_cfg) -> None:
    """Write full `weights` (PLTModel names at TP=PP=1) as a model-only payload."""
    model = _bare_model(model_cfg)
    _load_model_state(model, weights, folder)
    save(folder, model, optimizer=None)
