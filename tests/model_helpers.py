"""Small PLT models for the CPU tests (fp32, deterministic weights)."""

from __future__ import annotations

import torch

from model import ModelConfig, PLTModel

SMALL = dict(
    num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=2, ffn_hidden_size=128,
    vocab_size=128, max_position_embeddings=512, attention_backend="torch",
)


def small_config(**overrides) -> ModelConfig:
    return ModelConfig(**{**SMALL, **overrides})


def build_small(seed: int = 0, randomize_gate: bool = True, **overrides) -> PLTModel:
    """A small PLT model. The gate starts at zero by design (g = 0.5 everywhere); tests that must
    see the gate's input reach the output give it random weights with ``randomize_gate``."""
    torch.manual_seed(seed)
    model = PLTModel(small_config(**overrides).build())
    if randomize_gate:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "linear_gate" in name:
                    param.normal_(0.0, 0.5)
    return model.eval()
