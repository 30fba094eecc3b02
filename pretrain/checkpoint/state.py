"""What the Checkpointer itself saves in every checkpoint besides the engine's payload: the
trainer's state (loopcoder.json) and each rank's RNG states (rng/rank_XXXXX.pt).

loopcoder.json: step, consumed_samples, scheduler (the LR schedule's state), data (the loader's
state, with its fingerprint), model (the architecture fields), world_size, engine, and what the
engine adds about its payload (deepspeed: zero_stage). Converted checkpoints also carry
`weights_only: true` and `converted_from`.
"""

from __future__ import annotations

import json
import os
import random

import numpy
import torch

from pretrain.errors import CheckpointError
from pretrain.checkpoint.files import STATE_FILE


# -- RNG ---------------------------------------------------------------------------------------
def rng_state() -> dict:
    """Every RNG of this rank, as tensors and plain containers (loadable with weights_only)."""
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

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
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    numpy.random.set_state((np_kind, np_keys.numpy().astype(numpy.uint32), np_pos, np_has_gauss,
                            np_gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    get_cuda_rng_tracker().set_states(state["tracker"])


def save_rng(path: str) -> None:
    from pretrain.checkpoint.files import write_durably

    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_durably(path, lambda stream: torch.save(rng_state(), stream), binary=True)


def load_rng(path: str) -> None:
    try:
        state = torch.load(path, weights_only=True)
    except Exception as error:  # torch's messages suggest weights_only=False: never for our files
        raise CheckpointError(f"{path} is damaged and cannot be read as RNG states ({type(error).__name__})"
                              ) from error
    set_rng_state(state)


# -- trainer state -----------------------------------------------------------------------------
def trainer_state(step: int, loader, engine, model_fields: dict, world_size: int) -> dict:
    return {
        "step": step,
        "consumed_samples": loader.consumed_samples,
        "scheduler": engine.scheduler.state_dict(),
        "data": loader.state_dict(),
        "model": model_fields,
        "world_size": world_size,
        "engine": engine.name,
        **engine.payload_state(),
    }


def read_trainer_state(folder: str) -> dict:
    path = os.path.join(folder, STATE_FILE)
    try:
        with open(path, "rb") as stream:
            state = json.loads(stream.read().decode("utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{folder} is not a loopcoder checkpoint: {STATE_FILE} is missing")
    except ValueError as error:  # JSON and UTF-8 errors
        raise CheckpointError(f"{path} is damaged and cannot be read as JSON ({error})") from error
    if (not isinstance(state, dict) or not isinstance(state.get("step"), int)
            or not isinstance(state.get("model"), dict)):
        raise CheckpointError(f"{path} is damaged: it is not a trainer state (an object with an "
                              f"integer step and the model's fields)")
    return state
