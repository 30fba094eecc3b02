"""Training engines behind one interface (pretrain/engines/base.py: Engine).

    engine = build_engine(cfg, device, layout)   # cfg.engine: megatron | deepspeed; layout:
                                                 # pretrain/layout.py ParallelLayout

`megatron` (pretrain/engines/megatron.py): megatron-core's DDP, distributed optimizer and pipeline
schedules, TP/PP/DP. `deepspeed` (pretrain/engines/deepspeed.py): DeepSpeed ZeRO 0-3, data parallel
only, an optional dependency imported only when chosen. The trainer never branches on which.
"""

from __future__ import annotations

from pretrain.engines.base import Engine, StepResult

__all__ = ["Engine", "StepResult", "build_engine", "payload_format", "ENGINE_NAMES"]

ENGINE_NAMES = ("megatron", "deepspeed")


def build_engine(cfg, device, layout) -> Engine:
    if cfg.engine == "deepspeed":
        from pretrain.engines.deepspeed import DeepSpeedEngine
        return DeepSpeedEngine(cfg, device, layout)
    from pretrain.engines.megatron import MegatronEngine
    return MegatronEngine(cfg, device, layout)


def payload_format(engine_name: str):
    """The module that reads and checks an engine's checkpoint payload without the engine itself
    (one process, no optimizer): `check_complete(folder, saved)`, `read_weights(folder, saved,
    model_cfg)`, `write_weights(folder, weights, model_cfg)`. `saved` is the checkpoint's
    loopcoder.json."""
    if engine_name == "deepspeed":
        from pretrain.engines import deepspeed_checkpoint
        return deepspeed_checkpoint
    if engine_name == "megatron":
        from pretrain.engines import megatron_checkpoint
        return megatron_checkpoint
    raise ValueError(f"unknown engine {engine_name!r}; checkpoints are written by {ENGINE_NAMES}")
