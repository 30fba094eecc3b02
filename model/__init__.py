"""The Parallel Loop Transformer on megatron-core, importable without the trainer.

On a machine without CUDA, megatron-core needs its CPU compatibility layer (model/cpu_compat.py)
before a model is built; the entry points apply it explicitly (pretrain.distributed's
`start_processes` / `single_process_world`, which every process that builds a model goes through).
"""

from model.config import ConfigError, ModelConfig, PLTConfig
from model.plt_model import PLTModel
from model.unwrap import unwrap

__all__ = ["ConfigError", "ModelConfig", "PLTConfig", "PLTModel", "unwrap"]
