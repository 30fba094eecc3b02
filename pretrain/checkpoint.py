"""Sharded checkpoints: save, resume, `latest`, retention.

Layout of `checkpoint.dir`:

    latest                     one line, e.g. "iter_0000200"; replaced atomically, only after every
                               rank finished writing that checkpoint
    iter_0000200/              megatron-core dist_checkpointing (torch_dist): model, optimizer
        __*.distcp, .metadata, common.pt, metadata.json     (the sharded part and megatron's files)
        loopcoder.json         step, consumed_samples, scheduler, data loader state, model shape
        config.yaml            the run's resolved config
        rng/rank_00000.pt      per-rank RNG states (python, numpy, torch, cuda, megatron's tracker)

Saving writes into `.tmp_iter_0000200/`; after a barrier rank 0 renames it into place and then
replaces `latest` (write a temp file, os.replace). A crash or a second signal before that leaves the
previous checkpoint and `latest` untouched. Only the newest `checkpoint.keep` iter_ folders stay.

Loading never unpickles code: tensors come from the dist format, the common state and RNG files
through `torch.load(weights_only=True)`, the trainer's state from JSON, and the dist format's own
`.metadata` pickle through an unpickler that only admits torch's checkpoint metadata classes.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import pickle
import random
import shutil
from typing import Optional

import numpy
import torch
from megatron.core import dist_checkpointing, parallel_state
from megatron.core.dist_checkpointing.mapping import ShardedObject
from megatron.core.dist_checkpointing.dict_utils import nested_values
from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

from model.config import ConfigError

logger = logging.getLogger(__name__)

try:
    import psutil  # noqa: F401
except ImportError:
    # megatron-core's checkpoint writer processes call psutil only to log their memory use, and
    # without it they die before reporting back, so the save hangs for ever. Log 0 instead.
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    filesystem_async._process_memory = lambda: 0

LATEST = "latest"
STATE_FILE = "loopcoder.json"
# What must match between a checkpoint and the config for the weights to mean the same model.
SHAPE_FIELDS = ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups",
                "ffn_hidden_size", "vocab_size", "num_loops", "shared_kv",
                "untie_embeddings_and_output_weights")


def iter_name(step: int) -> str:
    return f"iter_{step:07d}"


def _barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def _is_main() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


# -- RNG --------------------------------------------------------------------------------------
def rng_state() -> dict:
    """Every RNG of this rank, as tensors and plain containers (loadable with weights_only)."""
    version, mt, gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = numpy.random.get_state()
    return {
        "python": [version, list(mt), gauss],
        "numpy": [np_kind, torch.from_numpy(np_keys.astype(numpy.int64)), np_pos, np_has_gauss,
                  np_gauss],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "tracker": {name: state.cpu() for name, state in get_cuda_rng_tracker().get_states().items()},
    }


def set_rng_state(state: dict) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    numpy.random.set_state((np_kind, np_keys.numpy().astype(numpy.uint32), np_pos, np_has_gauss,
                            np_gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    get_cuda_rng_tracker().set_states(state["tracker"])


# -- safe loading of the dist format's metadata ------------------------------------------------
class _MetadataUnpickler(pickle.Unpickler):
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
        return _MetadataUnpickler(file, **kwargs).load()

    @staticmethod
    def loads(data, **kwargs):
        return _MetadataUnpickler(io.BytesIO(data), **kwargs).load()


def _install_safe_metadata_loading() -> None:
    from torch.distributed.checkpoint import filesystem
    filesystem.pickle = _SafePickleModule


EXTRA_STATE = "_extra_state"


def _without_empty_extra_state(model_state: dict) -> dict:
    """Drop megatron's `_extra_state` entries of layers that have none (no Transformer Engine fp8).

    They are ShardedObjects: pickles that torch's planner loads with weights_only=False.
    """
    kept = {}
    for key, value in model_state.items():
        if key.endswith(EXTRA_STATE) and isinstance(value, ShardedObject):
            data = value.data
            if data is not None and not (isinstance(data, io.BytesIO) and _is_pickled_none(data)):
                raise RuntimeError(f"model entry {key!r} carries extra state (Transformer Engine "
                                   f"fp8?); loopcoder checkpoints hold tensors only")
            continue
        kept[key] = value
    return kept


def _is_pickled_none(buffer: io.BytesIO) -> bool:
    buffer.seek(0)
    try:
        return _MetadataUnpickler(buffer).load() is None
    except pickle.UnpicklingError:
        return False
    finally:
        buffer.seek(0)


def _refuse_pickled_objects(sharded_state_dict) -> None:
    """ShardedObjects are stored as pickles and loaded with weights_only=False by torch's planner."""
    for value in nested_values(sharded_state_dict):
        if isinstance(value, ShardedObject):
            raise RuntimeError(f"checkpoint entry {value.key!r} is a pickled ShardedObject; "
                               f"loopcoder checkpoints hold tensors only")


# -- save -------------------------------------------------------------------------------------
def _unwrapped(model):
    """The model under megatron's DDP / Float16Module wrappers: its keys are the checkpoint's."""
    while hasattr(model, "module"):
        model = model.module
    return model


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


def _sharded_state(engine, is_loading: bool) -> dict:
    model_state = _without_empty_extra_state(_unwrapped(engine.model).sharded_state_dict())
    # Distributed optimizer (parallel.distributed_optimizer): its state in the canonical per-parameter
    # layout (reloadable under another TP/PP/DP). megatron-core 0.16's default,
    # fully_sharded_model_space, fails ("flattened_range is not supported") and dp_reshardable
    # stores pickled ShardedObjects.
    metadata = {"distrib_optim_sharding_type": "fully_reshardable"}
    if is_loading:
        _check_distributed_optimizer_loadable(engine.optimizer)
    optimizer_state = engine.optimizer.sharded_state_dict(model_state, is_loading=is_loading,
                                                          metadata=metadata)
    return {"model": model_state, "optimizer": optimizer_state}


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read; raised on every rank together."""


# Async saves in flight (megatron-core's AsyncCallsQueue: the sharded tensors are written by a
# forked process per rank while training goes on). At most one save is in flight: a new save, and
# the end of training, first wait for the previous one to land.
_async_queue = None


def _any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on any: failure decisions are collective, so no rank
    raises while the others wait in a barrier."""
    if not torch.distributed.is_initialized():
        return flag
    value = torch.tensor([1 if flag else 0], dtype=torch.int32)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


def _collectively(what: str, fn, *args) -> None:
    """Run fn on every rank; if it failed anywhere, every rank raises CheckpointError together."""
    error = None
    try:
        fn(*args)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as caught:  # noqa: BLE001 torch's CheckpointException is a BaseException
        error = caught
    if _any_rank(error is not None):
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        detail = f"{type(error).__name__}: {error}" if error is not None else "failed on another rank"
        raise CheckpointError(f"{what} (rank {rank}: {detail})") from error


def finalize_async_saves(blocking: bool) -> None:
    """Finish the async saves whose writers are done on every rank: verify, rename, move `latest`.

    Call on every rank at the same points (each step, blocking at the end); without a save in
    flight it does nothing and communicates nothing.
    """
    if _async_queue is not None and _async_queue.get_num_unfinalized_calls():
        try:
            _async_queue.maybe_finalize_async_calls(blocking=blocking)
        except (CheckpointError, KeyboardInterrupt, SystemExit):
            raise
        except BaseException as error:  # megatron raises the writers' errors on every rank
            raise CheckpointError(f"async checkpoint save failed: {error}") from error


def save_checkpoint(root: str, step: int, engine, loader, config_yaml: str, keep: int,
                    model_fields: dict, async_save: bool = False) -> str:
    """Write iter_<step>/ on every rank, then move `latest` to it. Call on every rank.

    With async_save the tensors are written in the background: this returns once they are copied
    out of the model, and the folder is renamed into place and `latest` moved by
    finalize_async_saves, after every rank's writer finished and the files were verified.
    """
    global _async_queue
    finalize_async_saves(blocking=True)
    name = iter_name(step)
    final, tmp = os.path.join(root, name), os.path.join(root, f".tmp_{name}")

    def prepare():
        if _is_main():
            os.makedirs(root, exist_ok=True)
            # Half-written folders of earlier runs (killed mid-save): no save is in flight now.
            for stale in os.listdir(root):
                if stale.startswith(".tmp_iter_"):
                    shutil.rmtree(os.path.join(root, stale), ignore_errors=True)
            os.makedirs(tmp)

    _collectively(f"cannot create {tmp}", prepare)
    state = _sharded_state(engine, is_loading=False)
    _refuse_pickled_objects(state)
    request = None

    def write():
        nonlocal request
        request = dist_checkpointing.save(state, tmp, sharded_strategy=("torch_dist", 1),
                                          async_sharded_save=async_save)
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        os.makedirs(os.path.join(tmp, "rng"), exist_ok=True)
        _write_durably(os.path.join(tmp, "rng", f"rank_{rank:05d}.pt"),
                       lambda stream: torch.save(rng_state(), stream), binary=True)
        if _is_main():
            trainer_state = {
                "step": step,
                "consumed_samples": loader.consumed_samples,
                "scheduler": engine.scheduler.state_dict(),
                "data": loader.state_dict(),
                "model": model_fields,
                "world_size": (torch.distributed.get_world_size()
                               if torch.distributed.is_initialized() else 1),
            }
            _write_durably(os.path.join(tmp, STATE_FILE),
                           lambda stream: json.dump(trainer_state, stream, indent=1))
            _write_durably(os.path.join(tmp, "config.yaml"), lambda stream: stream.write(config_yaml))

    try:
        _collectively(f"cannot write checkpoint {name} into {tmp}", write)
    except CheckpointError:
        _discard(tmp)
        raise
    if request is None:  # synchronous: written (megatron's finalize ran inside save)
        _publish(root, name, tmp, final, keep)
        return final
    request.add_finalize_fn(lambda: _publish(root, name, tmp, final, keep))
    if _async_queue is None:
        from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue
        _async_queue = AsyncCallsQueue()
    _async_queue.schedule_async_request(request)
    return final


def _write_durably(path: str, write, binary: bool = False) -> None:
    with open(path, "wb" if binary else "w") as stream:
        write(stream)
        stream.flush()
        os.fsync(stream.fileno())


def _discard(tmp: str) -> None:
    """Remove a half-written folder (rank 0, after every rank stopped writing into it)."""
    _barrier()
    if _is_main():
        shutil.rmtree(tmp, ignore_errors=True)
    _barrier()


def verify_complete(folder: str) -> None:
    """Every file the dist format's `.metadata` refers to exists and is long enough, and the
    loopcoder files are there: a checkpoint that passes holds every rank's part."""
    for required in (".metadata", "common.pt", STATE_FILE, "config.yaml"):
        if not os.path.isfile(os.path.join(folder, required)):
            raise CheckpointError(f"{folder} is incomplete: {required} is missing")
    with open(os.path.join(folder, ".metadata"), "rb") as stream:
        metadata = _MetadataUnpickler(stream).load()
    needed = {}
    for info in (metadata.storage_data or {}).values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
    for relative_path, size in sorted(needed.items()):
        path = os.path.join(folder, relative_path)
        if not os.path.isfile(path):
            raise CheckpointError(f"{folder} is incomplete: {relative_path} is missing")
        if os.path.getsize(path) < size:
            raise CheckpointError(f"{folder} is incomplete: {relative_path} has "
                                  f"{os.path.getsize(path)} bytes, the metadata needs {size}")


def _publish(root: str, name: str, tmp: str, final: str, keep: int) -> None:
    """Verify the written folder, rename it into place, move `latest`, apply retention.

    Collective: called on every rank after every rank's writer finished."""
    _barrier()
    try:
        _collectively(f"checkpoint {name} failed verification",
                      lambda: verify_complete(tmp) if _is_main() else None)
    except CheckpointError:
        _discard(tmp)
        raise

    def rename():
        if _is_main():
            if os.path.exists(final):  # e.g. a run resumed at this step saves it again
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_dir(root)
            _write_latest(root, name)
            _apply_retention(root, keep, protect=name)

    _collectively(f"cannot move checkpoint {name} into place", rename)
    if _is_main():
        logger.info("checkpoint %s complete", final)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_latest(root: str, name: str) -> None:
    tmp = os.path.join(root, f".{LATEST}.tmp")
    with open(tmp, "w") as stream:
        stream.write(name + "\n")
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(tmp, os.path.join(root, LATEST))
    _fsync_dir(root)


def list_checkpoints(root: str) -> list[str]:
    if not os.path.isdir(root):
        return []
    return sorted(d for d in os.listdir(root)
                  if d.startswith("iter_") and os.path.isdir(os.path.join(root, d)))


def _apply_retention(root: str, keep: int, protect: str) -> None:
    if keep <= 0:
        return
    for name in list_checkpoints(root)[:-keep]:
        if name != protect:
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


# -- resume -----------------------------------------------------------------------------------
def resolve_resume(resume: str, root: str) -> Optional[str]:
    """The iter_ folder to load: auto -> `<root>/latest` if present; none -> None; else PATH.

    A PATH may be an iter_ folder or a checkpoint dir holding a `latest` file.
    """
    if resume == "none":
        return None
    folder = root if resume == "auto" else resume
    latest = os.path.join(folder, LATEST)
    if os.path.isfile(latest):
        with open(latest) as stream:
            target = os.path.join(folder, stream.read().strip())
        if not os.path.isdir(target):
            raise ConfigError(f"{latest} names {target}, which does not exist; pass "
                              f"checkpoint.resume=PATH of an iter_ folder or checkpoint.resume=none")
        return target
    if resume == "auto":
        return None
    if not os.path.isfile(os.path.join(resume, STATE_FILE)):
        raise ConfigError(f"checkpoint.resume={resume!r} is not a loopcoder checkpoint "
                          f"(no {STATE_FILE} and no {LATEST} file in it)")
    return resume


def read_trainer_state(path: str) -> dict:
    with open(os.path.join(path, STATE_FILE)) as stream:
        return json.load(stream)


def check_model_fields(path: str, saved: dict, config_fields: dict) -> None:
    name = os.path.basename(os.path.normpath(path))
    for key in SHAPE_FIELDS:
        if key in saved and saved[key] != config_fields[key]:
            raise ConfigError(
                f"checkpoint {name} has {key}={saved[key]} but the config says "
                f"{config_fields[key]}; pass model.{key}={saved[key]} or checkpoint.resume=none")


def load_checkpoint(path: str, engine, loader, model_fields: dict) -> dict:
    """Restore model, optimizer, scheduler, data position and RNG from `path`; returns its state."""
    try:
        verify_complete(path)
    except (CheckpointError, pickle.UnpicklingError, EOFError, OSError) as error:
        older = [n for n in list_checkpoints(os.path.dirname(os.path.normpath(path)))
                 if n < os.path.basename(os.path.normpath(path))]
        hint = f"checkpoint.resume={os.path.join(os.path.dirname(path), older[-1])}" if older else ""
        raise ConfigError(f"cannot resume from {path}: {error}; pass "
                          f"{hint + ' or ' if hint else ''}checkpoint.resume=none "
                          f"(nothing was overwritten)") from error
    trainer_state = read_trainer_state(path)
    check_model_fields(path, trainer_state["model"], model_fields)
    _install_safe_metadata_loading()
    template = _sharded_state(engine, is_loading=True)
    _refuse_pickled_objects(template)
    loaded = dist_checkpointing.load(template, path, sharded_strategy=("torch_dist", 1))
    missing, unexpected = _unwrapped(engine.model).load_state_dict(loaded["model"], strict=False)
    missing = [key for key in missing if not key.endswith(EXTRA_STATE)]
    if missing or unexpected:
        raise RuntimeError(f"{path}: model keys missing {missing}, unexpected {unexpected}")
    engine.optimizer.load_state_dict(loaded["optimizer"])
    engine.scheduler.load_state_dict(trainer_state["scheduler"])
    loader.load_state_dict(trainer_state["data"])

    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    rng_file = os.path.join(path, "rng", f"rank_{rank:05d}.pt")
    if os.path.isfile(rng_file):
        set_rng_state(torch.load(rng_file, weights_only=True))
    else:
        logger.warning("%s has no RNG state for rank %d (saved with another world size); "
                       "keeping this run's seeds", path, rank)
    return trainer_state


def model_fields_of(model_cfg) -> dict:
    return {k: v for k, v in dataclasses.asdict(model_cfg).items()}
