"""The megatron-core training engine: the model wrapped for data parallelism, its optimizer and LR
schedule, and one optimizer step over a global batch's micro-batches.

The trainer sees only this small interface (an optional DeepSpeed engine would offer the same):

    engine = MegatronEngine(cfg, world)
    result = engine.train_step(micro_batches)    # StepResult(loss, grad_norm, lr, skipped)
    loss = engine.evaluate(micro_batches)        # mean next-token loss, no gradients
    engine.model_chunks, engine.optimizer, engine.scheduler   # for pretrain/checkpoint.py
    engine.inference_model                       # for generation (no DDP wrapper)

Micro-batches are dicts with tokens, labels, loss_mask and position_ids ([mb, seq] tensors, from
data/loader.py). Each goes through megatron's forward-backward function (gradient accumulation in
DDP's fp32 buffers; the pipeline schedules drop in when parallel.pp > 1), then the megatron optimizer
clips and steps and the scheduler moves the LR. The model is anything returning per-token losses
[b, s] when given labels; nothing here knows about loops.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import partial
from typing import Dict, List

import torch
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.distributed import finalize_model_grads
from megatron.core.enums import ModelType
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.transformer.module import Float16Module

from model import PLTModel
from model.pipeline import loop_chunks
from pretrain.config import Config


@dataclass
class StepResult:
    loss: float          # token-weighted mean loss of the global batch (all data-parallel ranks)
    grad_norm: float     # global gradient norm before clipping
    lr: float            # the LR this step used
    skipped: bool        # the optimizer refused the step (non-finite gradients)


# Test hook: steps (1-based, comma-separated) whose loss is made NaN, e.g.
# LOOPCODER_INJECT_NAN_AT_STEPS=3,4 (tests/test_checkpoint_robust.py). Read here and nowhere else.
INJECT_NAN_ENV = "LOOPCODER_INJECT_NAN_AT_STEPS"


def _injected_nan_steps() -> set:
    return {int(step) for step in os.environ.get(INJECT_NAN_ENV, "").split(",") if step.strip()}


def use_bf16(cfg: Config) -> bool:
    precision = cfg.train.precision
    return precision == "bf16" or (precision == "auto" and torch.cuda.is_available())


def _loss_func(loss_mask: torch.Tensor, output_tensor: torch.Tensor):
    """Per-token losses [b, s] -> the micro-batch mean, plus (sum, count) for exact reporting."""
    losses = output_tensor.float()
    loss_mask = loss_mask.float()
    loss_sum = (losses * loss_mask).sum()
    num_tokens = loss_mask.sum()
    loss = loss_sum / num_tokens.clamp(min=1)
    return loss, {"loss_sum_and_tokens": torch.stack([loss_sum.detach(), num_tokens])}


class MegatronEngine:
    def __init__(self, cfg: Config, device: torch.device):
        self.cfg, self.device = cfg, device
        p, t = cfg.parallel, cfg.train
        bf16 = use_bf16(cfg)
        on_gpu = device.type == "cuda"
        self.model_config = cfg.model.build(
            tensor_parallel=p.tp, pipeline_parallel=p.pp, virtual_pipeline_parallel=p.vpp,
            sequence_parallel=p.sequence_parallel,
            params_dtype=torch.bfloat16 if bf16 else torch.float32,
            use_cpu_initialization=not on_gpu,
        )
        module = PLTModel(self.model_config)
        if not hasattr(module, "model_type"):
            # megatron's schedules read it (GPTModel sets it); PLT is a decoder-only model.
            module.model_type = ModelType.encoder_or_decoder
        if on_gpu:
            module.cuda(device)
        if bf16:
            # bf16 weights and activations; the optimizer keeps fp32 master weights.
            module = Float16Module(self.model_config, module)
        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True,
            overlap_grad_reduce=p.overlap_grad_reduce,
            use_distributed_optimizer=p.distributed_optimizer,
        )
        self.model = DistributedDataParallel(self.model_config, ddp_config, module)
        # What DDP, the optimizer and checkpoints see: the stage's one model, each weight once.
        self.model_chunks = [self.model]
        # What the schedules run: with pp > 1 one chunk per loop, the later ones parameter-free
        # views of the same stage (model/pipeline.py); with pp = 1 just the model.
        self.schedule_chunks = loop_chunks(self.model)
        # What megatron's schedules call: skip the DP all-reduce on all but the last micro-batch,
        # then finish it (and the TP/PP reductions) once per step.
        self.model_config.no_sync_func = self.model.no_sync
        self.model_config.finalize_model_grads_func = finalize_model_grads

        self.optimizer = get_megatron_optimizer(
            OptimizerConfig(
                optimizer="adam", lr=t.lr, min_lr=t.min_lr, weight_decay=t.weight_decay,
                adam_beta1=t.adam_beta1, adam_beta2=t.adam_beta2, adam_eps=t.adam_eps,
                clip_grad=t.clip_grad, bf16=bf16,
                params_dtype=torch.bfloat16 if bf16 else torch.float32,
                use_distributed_optimizer=p.distributed_optimizer,
            ),
            self.model_chunks,
        )
        decay_steps = t.decay_steps if t.decay_steps is not None else t.max_steps
        self.scheduler = OptimizerParamScheduler(
            self.optimizer, init_lr=0.0, max_lr=t.lr, min_lr=t.min_lr,
            lr_warmup_steps=t.warmup_steps, lr_decay_steps=decay_steps, lr_decay_style="cosine",
            start_wd=t.weight_decay, end_wd=t.weight_decay, wd_incr_steps=decay_steps,
            wd_incr_style="constant",
            # The config, not the checkpoint, sets LR/warm-up on resume; the step count is restored.
            use_checkpoint_opt_param_scheduler=False, override_opt_param_scheduler=True,
        )
        self.forward_backward_func = get_forward_backward_func()
        self._nan_steps, self._inject_nan = _injected_nan_steps(), False

    @property
    def inference_model(self) -> torch.nn.Module:
        return self.model.module

    @property
    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _forward_step(self, data_iterator, model):
        batch = next(data_iterator)
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        output = model(batch["tokens"], position_ids=batch["position_ids"], labels=batch["labels"])
        if self._inject_nan and model.training:
            output = output * float("nan")
        return output, partial(_loss_func, batch["loss_mask"])

    def _run(self, micro_batches: List[Dict[str, torch.Tensor]], forward_only: bool) -> float:
        t = self.cfg.train
        chunks = self.schedule_chunks
        # Each virtual chunk (loop) reads the same micro-batches: stage 0 embeds them in every
        # loop, the last stage takes the labels in the last loop.
        iterators = [iter(micro_batches) for _ in chunks]
        outputs = self.forward_backward_func(
            forward_step_func=self._forward_step,
            data_iterator=iterators if len(chunks) > 1 else iterators[0],
            model=chunks,
            num_microbatches=len(micro_batches),
            seq_length=t.seq_length,
            micro_batch_size=t.micro_batch_size,
            forward_only=forward_only,
        )
        # Only the last pipeline stage computes losses; it shares the mean with every rank.
        totals = torch.zeros(2, dtype=torch.float64, device=self.device)
        for out in outputs:
            totals += out["loss_sum_and_tokens"].to(torch.float64)
        if parallel_state.is_pipeline_last_stage(ignore_virtual=True):
            torch.distributed.all_reduce(totals, group=parallel_state.get_data_parallel_group())
        if parallel_state.get_pipeline_model_parallel_world_size() > 1:
            last = parallel_state.get_pipeline_model_parallel_last_rank()
            torch.distributed.broadcast(totals, src=last,
                                        group=parallel_state.get_pipeline_model_parallel_group())
        return float(totals[0] / totals[1].clamp(min=1))

    def train_step(self, micro_batches: List[Dict[str, torch.Tensor]]) -> StepResult:
        self.model.train()
        for chunk in self.model_chunks:
            chunk.zero_grad_buffer()
        self.optimizer.zero_grad()
        # The schedule's step count is the number of the step being taken (1-based), so the first
        # update already has a warm-up LR above zero and step `max_steps` ends at min_lr.
        self.scheduler.step(increment=1)
        lr = self.current_lr
        self._inject_nan = self.scheduler.num_steps in self._nan_steps
        loss = self._run(micro_batches, forward_only=False)
        # megatron's fp32 (and bf16 without loss scaling) optimizer steps on NaN/inf gradients, and
        # one such update ruins the weights: check the global norm first (all ranks get the same
        # all-reduced value, so they agree) and skip the update when it or the loss is not finite.
        if self.optimizer.prepare_grads():
            return StepResult(loss=loss, grad_norm=float("nan"), lr=lr, skipped=True)
        grad_norm = self.optimizer.get_grad_norm()
        if not (math.isfinite(loss) and grad_norm is not None and math.isfinite(grad_norm)):
            return StepResult(loss=loss, grad_norm=float(grad_norm if grad_norm is not None
                                                         else "nan"), lr=lr, skipped=True)
        update_successful, grad_norm, _ = self.optimizer.step()
        return StepResult(loss=loss, grad_norm=float(grad_norm or 0.0), lr=lr,
                          skipped=not update_successful)

    @torch.no_grad()
    def evaluate(self, micro_batches: List[Dict[str, torch.Tensor]]) -> float:
        self.model.eval()
        loss = self._run(micro_batches, forward_only=True)
        self.model.train()
        return loss
