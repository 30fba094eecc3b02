"""What a cell's config says about its cost: tokens and training FLOPs at a train row, and the
model's size in parameters.

Training FLOPs are the row's own `train_flops` (cumulative, logged by the trainer) when present;
else they are computed here from the same function the trainer's MFU uses
(model/flops.py: flops_per_token, training=True) times the tokens seen, and the report says so.
Parameters come from the planner's counter (planning/memory.py), which equals the built model's.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional


def model_config(model: Dict):
    """model/config.py's ModelConfig from config.yaml's `model` node; keys this version does not
    know (a newer run's) are left out, absent ones take the schema's defaults. None if the node
    cannot build one."""
    from model.config import ModelConfig

    known = {f.name for f in dataclasses.fields(ModelConfig)}
    try:
        return ModelConfig(**{k: v for k, v in model.items() if k in known})
    except (TypeError, ValueError):
        return None


def flops_per_token(model: Dict, seq_length: int) -> Optional[float]:
    """Training FLOPs per token (forward + backward) of the cell's model, as the MFU counts them."""
    from model.flops import flops_per_token as count

    cfg = model_config(model)
    try:
        return float(count(cfg, seq_length)) if cfg is not None else None
    except (TypeError, ValueError, ZeroDivisionError):
        return None


def parameters(model: Dict) -> Dict[str, Optional[int]]:
    """{total, non_embedding}: the unique parameters, and those of the layers and final norm
    (what scales with depth and width; the embedding and the output head excluded)."""
    from planning.memory import parameters_per_stage

    cfg = model_config(model)
    try:
        counts = parameters_per_stage(cfg)[0] if cfg is not None else None
    except (TypeError, ValueError, ZeroDivisionError, AttributeError):
        counts = None
    if not counts:
        return {"total": None, "non_embedding": None}
    non_embedding = sum(v for k, v in counts.items() if k not in ("embedding", "output_layer"))
    return {"total": int(sum(counts.values())), "non_embedding": int(non_embedding)}
