"""A Llama directory as the shared block of a looped model (`checkpoint.init_from=LLAMA_DIR` in an
R>1 run, `scripts.import_hf --hf LLAMA_DIR ... model.num_loops=2`).

    model_cfg, weights = as_block_of(llama_cfg, llama_weights, loop_settings)

A Llama (what an R=1 model exports as) has every tensor of the block: embeddings, layers, final
norm, head. It has no loop settings and no loop >= 2 gate, so both come from the run:

- the loop fields (LOOP_FIELDS) are the run's, not ModelConfig's defaults, so that the imported
  checkpoint describes exactly the model that loads it;
- each layer's gate starts where a fresh PLT's does (docs/spec.md#gate: W_g and
  b_g start at zero, g = 0.5, an even mix of the two branches; model/attention.py builds them with
  zeros), and the hidden gate's own RMSNorm at ones, like every RMSNorm at initialisation. Loop 1
  of the result then computes exactly the Llama; later loops start from an untrained, even gate.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Tuple

import torch

from model.config import ConfigError, ModelConfig

# The ModelConfig fields a Llama has no value for: the loops'.
LOOP_FIELDS = ("num_loops", "clp", "clp_offset", "clp_emb_scale", "clp_hidden_scale",
               "normalize_per_loop", "shared_kv", "swa_window", "gate_input")


def as_block_of(llama: ModelConfig, weights: Dict[str, torch.Tensor], loop_settings: dict
                ) -> Tuple[ModelConfig, Dict[str, torch.Tensor]]:
    """(the looped ModelConfig, weights with the gates at their initial values)."""
    unknown = sorted(set(loop_settings) - set(LOOP_FIELDS))
    if unknown:
        raise ConfigError(f"{unknown} are not loop settings; a Llama directory only takes "
                          f"{list(LOOP_FIELDS)} (its shapes come from its config.json)")
    model_cfg = dataclasses.replace(llama, **loop_settings)
    model_cfg.validate()  # ConfigError naming the field (a loop setting out of range)
    weights = dict(weights)
    if model_cfg.has_gated_loops:
        heads, hidden = model_cfg.num_attention_heads, model_cfg.hidden_size
        width = hidden // heads if model_cfg.gate_input == "query" else hidden
        for i in range(model_cfg.num_layers):
            prefix = f"decoder.layers.{i}.self_attention."
            weights[prefix + "linear_gate.weight"] = torch.zeros(heads, width)
            weights[prefix + "linear_gate.bias"] = torch.zeros(heads)
            if model_cfg.gate_input == "hidden":
                weights[prefix + "gate_norm.weight"] = torch.ones(hidden)
    return model_cfg, weights
