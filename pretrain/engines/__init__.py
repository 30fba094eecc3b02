"""The training engines, one table: name -> engine class, checkpoint payload, config check.

    engine = build_engine(cfg, device, layout)   # cfg.engine: megatron | deepspeed; layout:
                                                 # pretrain/layout.py ParallelLayout
    payload = payload_format(engine_of(state))    # who wrote a checkpoint (its loopcoder.json)
    ENGINES[cfg.engine].check_config(cfg)         # what that engine cannot do (config.validate)

`megatron` (pretrain/engines/megatron.py): megatron-core's DDP, distributed optimizer and pipeline
schedules, TP/PP/DP. `deepspeed` (pretrain/engines/deepspeed.py): DeepSpeed ZeRO 0-3, data parallel
only, an optional dependency imported only when used (pretrain/engines/deepspeed_package.py). Each
engine's payload module (`check_complete(folder, saved)`, `read_weights(folder, saved, model_cfg)`,
`write_weights(folder, weights, model_cfg)`; `saved` is the checkpoint's loopcoder.json) reads and
writes its files without the engine: one process, no optimizer. This module imports both engines
and both payloads; none of them imports this module, and a payload never imports its engine. The
trainer never branches on which engine it has.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Callable, Dict, Optional

from pretrain.engines import deepspeed, deepspeed_checkpoint, megatron, megatron_checkpoint
from pretrain.engines.base import Engine, StepResult

__all__ = ["Engine", "StepResult", "ENGINES", "ENGINE_NAMES", "DEFAULT_ENGINE", "build_engine",
           "engine_of", "payload_format"]


@dataclass(frozen=True)
class EngineEntry:
    engine: type                       # an Engine subclass: EngineClass(cfg, device)
    payload: ModuleType                # its checkpoint payload format (module docstring)
    check_config: Optional[Callable]   # check_config(cfg): its refusals beyond the shared rules


ENGINES: Dict[str, EngineEntry] = {
    "megatron": EngineEntry(megatron.MegatronEngine, megatron_checkpoint, None),
    "deepspeed": EngineEntry(deepspeed.DeepSpeedEngine, deepspeed_checkpoint,
                             deepspeed.check_config),
}
ENGINE_NAMES = tuple(ENGINES)
# Checkpoints written before loopcoder.json recorded its engine were all megatron's.
DEFAULT_ENGINE = "megatron"


def engine_of(state: dict) -> str:
    """The engine that wrote a checkpoint, from its loopcoder.json (trainer state)."""
    return state.get("engine", DEFAULT_ENGINE)


def _entry(engine_name: str) -> EngineEntry:
    if engine_name not in ENGINES:
        raise ValueError(f"unknown engine {engine_name!r}; checkpoints are written by "
                         f"{ENGINE_NAMES}")
    return ENGINES[engine_name]


def build_engine(cfg, device, layout) -> Engine:
    return _entry(cfg.engine).engine(cfg, device, layout)


def payload_format(engine_name: str) -> ModuleType:
    """The module that reads and checks `engine_name`'s checkpoint payload (module docstring)."""
    return _entry(engine_name).payload


def check_engine_config(cfg) -> None:
    """The engine's own refusals (pretrain/config.py validate(), after the shared rules)."""
    from model.config import require

    require(cfg.engine in ENGINES,
            f"engine={cfg.engine!r}; use {' or '.join(ENGINE_NAMES)}")
    check = ENGINES[cfg.engine].check_config
    if check is not None:
        check(cfg)
