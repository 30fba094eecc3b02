"""The Parallel Loop Transformer on megatron-core, importable without the trainer.

Importing this package applies the CPU compatibility layer for megatron-core when (and only when)
CUDA is absent; see model/cpu_compat.py.
"""

from model import cpu_compat

cpu_compat.apply()

from model.config import ConfigError, ModelConfig, PLTConfig  # noqa: E402
from model.plt_model import PLTModel  # noqa: E402

__all__ = ["ConfigError", "ModelConfig", "PLTConfig", "PLTModel"]
