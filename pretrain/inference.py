"""A trained checkpoint's model in one process, for generation and diagnostics.

    single_process_world()            # gloo world of one + megatron parallel state at TP=PP=1
    model, config, step = load_model("runs/x/checkpoints/iter_0000300")

The model is rebuilt from the checkpoint's own config.yaml (tensor parallel 1, fp32; megatron's
dist checkpointing reshards whatever layout it was saved with) and only the model weights are read,
through the trainer's safe loader (no pickled code runs).
"""

from __future__ import annotations

import os

import torch
from omegaconf import OmegaConf

import model  # noqa: F401  (CPU compatibility layer for megatron-core when CUDA is absent)
from model import ModelConfig, PLTModel


def single_process_world() -> None:
    """A gloo world of one and megatron's parallel state at TP=PP=1, unless a caller set one up."""
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    if not torch.distributed.is_initialized():
        # A world of one needs no rendezvous: an in-memory store, so no port can collide.
        torch.distributed.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0,
                                             world_size=1)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(1, 1)
        model_parallel_cuda_manual_seed(1234)


def load_model(folder: str) -> tuple:
    """(PLTModel with the checkpoint's weights, the checkpoint's resolved config, its step)."""
    from megatron.core import dist_checkpointing
    from pretrain import checkpoint as ckpt

    config = OmegaConf.load(os.path.join(folder, "config.yaml"))
    fields = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), config.model))
    fields.attention_backend = "auto"  # the saved run may have said flash; the math is the same
    plt = PLTModel(fields.build())
    ckpt._install_safe_metadata_loading()  # the trainer's safe unpickler for the dist format
    wanted = ckpt._without_empty_extra_state(plt.sharded_state_dict())  # as the trainer saved it
    loaded = dist_checkpointing.load({"model": wanted}, folder,
                                     sharded_strategy=("torch_dist", 1))
    plt.load_state_dict(loaded["model"])
    return plt.eval(), config, ckpt.read_trainer_state(folder)["step"]
