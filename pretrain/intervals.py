"""The one rule for "is X due at step N": logging, evaluation, code evaluation, diagnostics and
checkpoints all follow it (pretrain/trainer.py, pretrain/checkpoint/checkpointer.py).

    due(cfg.eval.interval, step, last_step)   # every `interval` steps and at the last; 0: never
"""

from __future__ import annotations


def due(interval: int, step: int, last_step: bool = False) -> bool:
    """Every `interval` steps (0: never), and at the run's last step when `last_step` is true (its
    values are the ones a run is judged by, wherever the interval falls)."""
    return interval > 0 and (step % interval == 0 or last_step)
