"""Fault injection, for tests and for rehearsing a failure: the `debug.*` keys (pretrain/config.py).

    train_loader = nan_loss_at_steps(train_loader, cfg.debug.nan_loss_at_steps, global_batch_size)

`debug.nan_loss_at_steps=[3,4]` makes the training loss of those optimizer steps (1-based) NaN, as
a numerical blow-up would: every token's loss weight is NaN, so the loss and every gradient are NaN
whatever the engine and the parallel layout. The engine then skips the update, and
train.max_skipped_steps of them in a row stop the run. Nothing here runs unless the key is set.
"""

from __future__ import annotations

from typing import Iterable


class _NanLossAtSteps:
    """The train loader, with NaN loss weights in the micro-batches of the chosen steps."""

    def __init__(self, loader, steps: Iterable[int], global_batch_size: int):
        self._loader, self._steps, self._global_batch_size = loader, set(steps), global_batch_size

    def __getattr__(self, name):  # consumed_samples, state_dict, ...: the loader's own
        return getattr(self._loader, name)

    def __iter__(self):
        return self

    def __next__(self):
        step = self._loader.consumed_samples // self._global_batch_size + 1
        micro_batches = next(self._loader)
        if step in self._steps:
            for batch in micro_batches:
                batch["loss_mask"] = batch["loss_mask"] * float("nan")
        return micro_batches


def nan_loss_at_steps(loader, steps, global_batch_size: int):
    return _NanLossAtSteps(loader, steps, global_batch_size) if steps else loader
