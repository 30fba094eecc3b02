"""The Trainer: one run's data, engine, checkpointer, metrics and stop flag, and the training loop.

    trainer = Trainer(config, world, layout, stop, config_yaml=..., config_values=...,
                      evaluate_code=..., hf_importer=...)   # builds the parts
    status = trainer.train()     # start or resume, then step, log, evaluate, checkpoint, stop

`train()` asks the Checkpointer where to start (pretrain/checkpoint/checkpointer.py: `load()`, a
resume, checkpoint.init_from or a fresh start) and runs the loop from there. `status` is 0 when
train.max_steps is reached and EXIT_REQUEUE (75) when a stop signal arrived: then the step in flight
finished and a checkpoint was saved. Ranks agree on stopping through an all-reduce of the flag every
step (the scheduler may signal only some of them). What is due at a step follows one rule
(pretrain/intervals.py). Evaluations share the step's metrics row: the validation loss
(eval.interval), the code metrics (eval.code.interval: HumanEval solution likelihood,
pretrain/eval_code.py); the per-loop diagnostics have rows of their own.

What needs a whole forward on one rank (code evaluation, diagnostics) runs only when the layout
puts the whole model on each rank (pretrain/layout.py ParallelLayout.whole_model_on_each_rank).
The entry (pretrain/train.py) hands the Trainer what pretrain/ may not import itself
(docs/architecture.md#floors): `evaluate_code` (evaluation/during_training.py) and `hf_importer`
(handoff/import_hf.py, for checkpoint.init_from of a Hugging Face folder).
"""

from __future__ import annotations

import logging
import time
from typing import NamedTuple

from model.diagnostics import compute_loop_diagnostics
from model.flops import flops_per_token, peak_flops_per_device
from pretrain.distributed import all_reduce_max, rank
from pretrain.errors import DivergedError
from pretrain.config_rules import reads_held_out_batch
from pretrain.intervals import due
from pretrain.metrics import MetricsLogger, peak_memory_gb
from pretrain.signals import EXIT_REQUEUE

log = logging.getLogger("pretrain")



class RunData(NamedTuple):
    train_loader: object      # this rank's micro-batches of each global batch (data/loader.py)
    held_out: object          # this rank's share of validation batches 0..eval.batches-1, or None
    tokenizer: object         # data/tokenizer.py CodeTokenizer


def build_data(config, layout) -> RunData:
    """The tokenizer, this rank's train loader and the held-out batch (the validation split is
    read only when something uses it: pretrain/config_rules.py reads_held_out_batch)."""
    from megatron.core import parallel_state

    from data.loader import build_loader
    from data.prepare import prepare_data
    from data.tokenizer import CodeTokenizer

    train = config.train
    prepared = prepare_data(config.data, train.seq_length)
    tokenizer = CodeTokenizer(prepared.tokenizer_model)
    tokenizer.check_model_vocab(config.model.vocab_size)
    dp_rank = parallel_state.get_data_parallel_rank()
    dp_size = parallel_state.get_data_parallel_world_size()
    splits = ("train", "valid") if reads_held_out_batch(config, layout) else ("train",)
    loaders = [build_loader(config.data, prepared, split, train.seq_length,
                            train.global_batch_size, train.micro_batch_size, dp_rank, dp_size,
                            train.seed) for split in splits]
    # eval.batches counts only where a validation loss is computed: the diagnostics alone read
    # the first micro-batch of batch 0, and must not be refused for a setting nothing uses.
    batches = config.eval.batches if config.eval.interval > 0 else 1
    held_out = loaders[1].held_out_batch(batches) if len(loaders) > 1 else None
    return RunData(loaders[0], held_out, tokenizer)


class Throughput:
    """Tokens/s and MFU over the steps since the last logged one, and the run's cumulative
    training tokens and FLOPs (the compute-fair axis of a loop-count comparison)."""

    def __init__(self, train_cfg, model_cfg, layout):
        self.seq_length = train_cfg.seq_length
        self.tokens_per_step = train_cfg.global_batch_size * train_cfg.seq_length
        self.model_flops = flops_per_token(model_cfg, train_cfg.seq_length)
        # MFU is against the peak of every device of the layout.
        self.peak = peak_flops_per_device(train_cfg.peak_tflops) * layout.world_size
        self.seconds, self.steps = 0.0, 0

    def add(self, seconds: float) -> None:
        self.seconds, self.steps = self.seconds + seconds, self.steps + 1

    def take(self) -> dict:
        tokens_per_s = self.steps * self.tokens_per_step / self.seconds
        row = {"tokens_per_s": tokens_per_s, "mfu": tokens_per_s * self.model_flops / self.peak,
               "step_time_s": self.seconds / self.steps}
        self.seconds, self.steps = 0.0, 0
        return row

    def cumulative(self, consumed_samples: int) -> dict:
        """Training tokens and model FLOPs since step 0, from the samples consumed (the loader's
        count, which a resume restores): the same per-token FLOPs as the MFU (model/flops.py)."""
        tokens = consumed_samples * self.seq_length
        return {"tokens": tokens, "train_flops": float(tokens * self.model_flops)}


class Trainer:
    def __init__(self, config, world, layout, stop, *, config_yaml: str, config_values: dict,
                 evaluate_code=None, hf_importer=None):
        """`config`: the resolved, validated run config; `layout`: its ParallelLayout for this
        world (pretrain/layout.py); `config_yaml` / `config_values`: the config as config.yaml's
        text and as a dict (saved in each checkpoint; wandb's run config).
        `evaluate_code(model, tokenizer, cfg.eval.code, rank=)`: the code metrics
        (evaluation/during_training.py), needed when eval.code.interval > 0; `hf_importer`: the
        Hugging Face reader checkpoint.init_from uses for an HF folder (handoff/import_hf.py
        import_for_run). Both are handed in by the entry, pretrain/train.py: pretrain/ never
        imports evaluation/ or handoff/ (docs/architecture.md#floors)."""
        from pretrain.checkpoint import Checkpointer, model_fields_of
        from pretrain.debug import nan_loss_at_steps
        from pretrain.engines import build_engine

        self.config, self.world, self.layout, self.stop = config, world, layout, stop
        self.config_values = config_values
        self.evaluate_code = evaluate_code
        data = build_data(config, layout)
        self.engine = build_engine(config, world.device, layout)
        self.checkpointer = Checkpointer(
            config.checkpoint, self.engine, data.train_loader,
            model_fields=model_fields_of(config.model), config_yaml=config_yaml,
            tokenizer_model=data.tokenizer.model_path, run_dir=config.run_dir,
            hf_importer=hf_importer)
        # The loop reads the loader through the debug.* fault injection (a no-op unless set); the
        # checkpointer saves and restores the loader itself.
        self.data = data._replace(train_loader=nan_loss_at_steps(
            data.train_loader, config.debug.nan_loss_at_steps, config.train.global_batch_size))
        self.metrics = None  # opened by train(): a resume cuts metrics.jsonl back to its step

    def train(self) -> int:
        """Start (or resume), then the loop: 0 at train.max_steps, EXIT_REQUEUE after a stop."""
        config = self.config
        try:
            start_step = self.checkpointer.load()
            self._log_start(start_step)
            self.metrics = MetricsLogger(config.run_dir, self.world.is_main, config.train.max_steps,
                                         config.logging.wandb, self.config_values,
                                         resume_step=start_step)
            try:
                status = self._loop(start_step)
            finally:
                self.metrics.finish()
        finally:
            self.checkpointer.close()
        if status != 0 and self.world.is_main:
            log.warning("stopped by %s at a checkpoint; exit %d (under SLURM: requeue, unless the "
                        "job was cancelled). Continue with: python -m pretrain.train --config-dir "
                        "%s --config-name resume", self.stop.signal_name, status, config.run_dir)
        return status

    def _loop(self, start_step: int) -> int:
        cfg, train, engine, data = self.config, self.config.train, self.engine, self.data
        throughput = Throughput(train, cfg.model, self.layout)
        # Code evaluation and diagnostics need a whole forward on one rank.
        whole_model = self.layout.whole_model_on_each_rank
        step = start_step
        skipped_in_a_row = skipped_total = 0

        while step < train.max_steps:
            micro_batches = next(data.train_loader)
            started = time.perf_counter()
            result = engine.train_step(micro_batches)
            throughput.add(time.perf_counter() - started)
            step += 1
            last_step = step == train.max_steps
            stopping = all_reduce_max(self.stop.requested) > 0
            self.checkpointer.finalize(blocking=False)  # an async save whose writers finished
            # A non-finite loss or gradient norm: the engine made no update (every rank agrees,
            # the values are all-reduced). Log it; too many in a row mean the run diverged.
            skipped_in_a_row = skipped_in_a_row + 1 if result.skipped else 0
            skipped_total += result.skipped

            # The first step of a run is logged too: its loss is the start (ln(vocab) when fresh).
            log_due = (due(cfg.logging.interval, step, last_step) or step == start_step + 1
                       or stopping or result.skipped)
            eval_due = due(cfg.eval.interval, step, last_step)
            code_due = whole_model and due(cfg.eval.code.interval, step, last_step)
            if log_due or eval_due or code_due:
                row = {"step": step, "consumed_samples": data.train_loader.consumed_samples,
                       "loss": result.loss, "lr": result.lr, "grad_norm": result.grad_norm,
                       **throughput.take(), "memory_gb": peak_memory_gb(),
                       **throughput.cumulative(data.train_loader.consumed_samples)}
                if result.skipped:
                    row.update(skipped=True, skipped_steps=skipped_total)
                if eval_due:
                    row["val_loss"] = engine.evaluate(data.held_out)
                if code_due:
                    row.update(self.evaluate_code(engine.inference_model, data.tokenizer, cfg.eval.code,
                                             rank=rank()))
                self.metrics.log(row)

            if whole_model and due(cfg.diagnostics.interval, step, last_step):
                rows = compute_loop_diagnostics(engine.inference_model, data.held_out[0]["tokens"],
                                                attention_queries=cfg.diagnostics.attention_queries)
                self.metrics.log_diagnostics(rows, step)

            if skipped_in_a_row > train.max_skipped_steps:
                self.checkpointer.finalize(blocking=True)
                raise DivergedError(
                    f"steps {step - skipped_in_a_row + 1}-{step}: {skipped_in_a_row} steps in a "
                    f"row had a non-finite loss or gradient norm (train.max_skipped_steps="
                    f"{train.max_skipped_steps}); the weights are those of step "
                    f"{step - skipped_in_a_row}. Resume from the last checkpoint in "
                    f"{cfg.checkpoint.dir} with a lower train.lr, or skip the data (nothing was "
                    f"saved after the divergence)")
            # Due or not, the checkpointer decides; at the last step or a stop it publishes all.
            self.checkpointer.save(step, last_step=last_step, stopping=stopping)
            if stopping:
                return EXIT_REQUEUE
        return 0

    def _log_start(self, start_step: int) -> None:
        from model.kernels import describe_backend
        from pretrain.engines.base import params_dtype

        config, world, engine = self.config, self.world, self.engine
        if not world.is_main:
            return
        log.info("run folder %s (world %d: %s, %s, engine=%s)", config.run_dir, world.world_size,
                 self.layout.describe(), world.device, engine.name)
        if self.checkpointer.resumed_from is not None:
            log.info("resumed from %s: step %d, %d samples consumed",
                     self.checkpointer.resumed_from, start_step,
                     self.data.train_loader.consumed_samples)
        else:
            log.info("fresh start: %s, %.2fM parameters (this rank), R=%d", config.model.name,
                     engine.num_parameters() / 1e6, config.model.num_loops)
        log.info(describe_backend(config.model.attention_backend, world.device,
                                  params_dtype(config.train)))
        if config.diagnostics.interval > 0 and not self.layout.whole_model_on_each_rank:
            log.info("loop diagnostics are off: they need parallel.pp=1 (all loops on a rank)")
