"""The training loop, and nothing else: step, log, evaluate, checkpoint, stop on request.

    status = train_loop(cfg, engine, data, metrics, checkpointer, stop, start_step, layout)

`data` holds the train loader, the held-out batch and the tokenizer (pretrain/train.py). `status` is
0 when train.max_steps is reached and EXIT_REQUEUE (75) when a stop signal arrived: then the step in
flight finished and a checkpoint was saved. Ranks agree on stopping through an all-reduce of the
flag every step (the scheduler may signal only some of them). Evaluations share the step's metrics
row: the validation loss (eval.interval), the code metrics (eval.code.interval: HumanEval solution
likelihood, pretrain/eval_code.py); the per-loop diagnostics have rows of their own.
"""

from __future__ import annotations

import time

from model.diagnostics import compute_loop_diagnostics
from model.flops import flops_per_token, peak_flops_per_device
from pretrain.distributed import all_reduce_max, rank
from pretrain.errors import DivergedError
from pretrain.eval_code import code_eval_due
from pretrain.metrics import peak_memory_gb
from pretrain.signals import EXIT_REQUEUE


def diagnostics_due(cfg, step: int, layout) -> bool:
    """Loop diagnostics need the whole model on a rank (ParallelLayout.whole_model_on_each_rank;
    train.py says so at start when they are off)."""
    interval = cfg.diagnostics.interval
    return (interval > 0 and layout.whole_model_on_each_rank
            and (step % interval == 0 or step == cfg.train.max_steps))


class Throughput:
    """Tokens/s and MFU over the steps since the last logged one, and the run's cumulative
    training tokens and FLOPs (the compute-fair axis of a loop-count comparison)."""

    def __init__(self, cfg, world_size: int):
        t = cfg.train
        self.tokens_per_step = t.global_batch_size * t.seq_length
        self.model_flops = flops_per_token(cfg.model, t.seq_length)
        self.peak = peak_flops_per_device(t.peak_tflops) * world_size
        self.seconds, self.steps = 0.0, 0

    def add(self, seconds: float) -> None:
        self.seconds, self.steps = self.seconds + seconds, self.steps + 1

    def take(self) -> dict:
        tokens_per_s = self.steps * self.tokens_per_step / self.seconds
        row = {"tokens_per_s": tokens_per_s, "mfu": tokens_per_s * self.model_flops / self.peak,
               "step_time_s": self.seconds / self.steps}
        self.seconds, self.steps = 0.0, 0
        return row

    def cumulative(self, consumed_samples: int, seq_length: int) -> dict:
        """Training tokens and model FLOPs since step 0, from the samples consumed (the loader's
        count, which a resume restores): the same per-token FLOPs as the MFU (model/flops.py)."""
        tokens = consumed_samples * seq_length
        return {"tokens": tokens, "train_flops": float(tokens * self.model_flops)}


def train_loop(cfg, engine, data, metrics, checkpointer, stop, start_step: int,
               layout, *, evaluate_code=None) -> int:
    """`evaluate_code(model, tokenizer, cfg.eval.code, rank=)`: the code metrics
    (evaluation/during_training.py), handed down by the entry (pretrain/train.py): pretrain/ never
    imports evaluation/ (docs/architecture.md#floors). Needed when eval.code.interval > 0."""
    t = cfg.train
    throughput = Throughput(cfg, layout.world_size)
    step, last_saved = start_step, start_step
    skipped_in_a_row = skipped_total = 0

    while step < t.max_steps:
        micro_batches = next(data.train_loader)
        started = time.perf_counter()
        result = engine.train_step(micro_batches)
        throughput.add(time.perf_counter() - started)
        step += 1
        stopping = all_reduce_max(stop.requested) > 0
        checkpointer.finalize(blocking=False)  # an async save whose writers finished: publish it
        # A non-finite loss or gradient norm: the engine made no update (every rank agrees, the
        # values are all-reduced). Log it; too many in a row mean the run diverged.
        skipped_in_a_row = skipped_in_a_row + 1 if result.skipped else 0
        skipped_total += result.skipped

        # The first step of a run is logged too: it shows the starting loss (ln(vocab) when fresh).
        log_due = (step % cfg.logging.interval == 0 or step in (start_step + 1, t.max_steps)
                   or stopping or result.skipped)
        eval_due = cfg.eval.interval > 0 and (step % cfg.eval.interval == 0 or step == t.max_steps)
        code_due = (layout.whole_model_on_each_rank
                    and code_eval_due(cfg.eval.code, step, t.max_steps))
        if log_due or eval_due or code_due:
            row = {"step": step, "consumed_samples": data.train_loader.consumed_samples,
                   "loss": result.loss, "lr": result.lr, "grad_norm": result.grad_norm,
                   **throughput.take(), "memory_gb": peak_memory_gb(),
                   **throughput.cumulative(data.train_loader.consumed_samples, t.seq_length)}
            if result.skipped:
                row.update(skipped=True, skipped_steps=skipped_total)
            if eval_due:
                row["val_loss"] = engine.evaluate(data.held_out)
            if code_due:
                row.update(evaluate_code(engine.inference_model, data.tokenizer, cfg.eval.code,
                                         rank=rank()))
            metrics.log(row)

        if diagnostics_due(cfg, step, layout):
            rows = compute_loop_diagnostics(engine.inference_model, data.held_out[0]["tokens"],
                                            attention_queries=cfg.diagnostics.attention_queries)
            metrics.log_diagnostics(rows, step)

        if skipped_in_a_row > t.max_skipped_steps:
            checkpointer.finalize(blocking=True)
            raise DivergedError(
                f"steps {step - skipped_in_a_row + 1}-{step}: {skipped_in_a_row} steps in a row had a "
                f"non-finite loss or gradient norm (train.max_skipped_steps={t.max_skipped_steps}); "
                f"the weights are those of step {step - skipped_in_a_row}. Resume from the last "
                f"checkpoint in {cfg.checkpoint.dir} with a lower train.lr, or skip the data "
                f"(nothing was saved after the divergence)")
        if stopping:
            checkpointer.save(step)
            checkpointer.finalize(blocking=True)
            return EXIT_REQUEUE
        if cfg.checkpoint.interval and step % cfg.checkpoint.interval == 0:
            checkpointer.save(step)
            last_saved = step

    if cfg.checkpoint.save_final and last_saved != step:
        checkpointer.save(step)
    checkpointer.finalize(blocking=True)
    return 0
