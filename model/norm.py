"""RMSNorm that works with megatron's sequence parallelism.

megatron-core's local (non-Apex, non-TE) norm, ``WrappedTorchNorm``, refuses sequence parallelism.
This one marks its weight ``sequence_parallel`` so that megatron's DDP all-reduces its gradient over
the tensor-parallel group, as megatron does for its own fused norms. The parameter is named
``weight`` like torch.nn.RMSNorm's, so state dicts line up with megatron's GPTModel.
"""

from __future__ import annotations

import torch
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig

from model.fused_elementwise import fused_rms_norm, rms_norm


class RMSNorm(MegatronModule):
    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-5):
        super().__init__(config=config)
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        setattr(self.weight, "sequence_parallel", config.sequence_parallel)
        # model.fused_elementwise: the same formula as compiled kernels (model/fused_elementwise.py)
        self.fused = getattr(config, "fused_elementwise", False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 at least (bf16 sums of squares lose precision; a float64 model keeps
        # float64, what exactness checks against references run in), return in the input dtype.
        return (fused_rms_norm if self.fused else rms_norm)(x, self.weight, self.eps)
