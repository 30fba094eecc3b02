"""The megatron-core engine (`engine=megatron`): the model wrapped for data parallelism, its optimizer
and LR schedule, and one optimizer step over a global batch's micro-batches.

Each micro-batch goes through megatron's forward-backward function (gradient accumulation in DDP's
fp32 buffers; the pipeline schedules drop in when parallel.pp > 1, with the loops as the virtual
chunks: model/pipeline.py), then the megatron optimizer clips and steps and the scheduler moves the
LR. TP, PP, DP and the distributed optimizer all come from megatron-core. Its checkpoint payload is
megatron's dist_checkpointing (pretrain/engines/megatron_checkpoint.py).
"""

from __future__ import annotations

import math
from functools import partial
import torch

from pretrain.engines import megatron_checkpoint, megatron_results_queue
from pretrain.engines.base import (Engine, MicroBatches, StepResult, build_lr_schedule, mean_of,
                                   model_config_of, params_dtype, token_weighted_loss, use_bf16)


class MegatronEngine(Engine):
    name = "megatron"

    def __init__(self, cfg, device: torch.device, layout):
        super().__init__(cfg, device)
        from megatron.core.distributed import (DistributedDataParallel,
                                               DistributedDataParallelConfig, finalize_model_grads)
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
        from megatron.core.pipeline_parallel import get_forward_backward_func
        from megatron.core.transformer.module import Float16Module

        from model import PLTModel
        from model.pipeline import loop_chunks

        parallel, train = cfg.parallel, cfg.train
        bf16 = use_bf16(train)
        self.model_config = model_config_of(cfg, device, layout)
        module = PLTModel(self.model_config)
        if device.type == "cuda":
            module.cuda(device)
        if bf16:
            # bf16 weights and activations; the optimizer keeps fp32 master weights.
            module = Float16Module(self.model_config, module)
        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True,
            overlap_grad_reduce=parallel.overlap_grad_reduce,
            use_distributed_optimizer=parallel.distributed_optimizer,
        )
        # What DDP, the optimizer and checkpoints see: the stage's one model, each weight once.
        self.model = DistributedDataParallel(self.model_config, ddp_config, module)
        # What the schedules run: with pp > 1 one chunk per loop, the later ones parameter-free
        # views of the same stage (model/pipeline.py); with pp = 1 just the model.
        self.schedule_chunks = loop_chunks(self.model)
        # What megatron's schedules call: skip the DP all-reduce on all but the last micro-batch,
        # then finish it (and the TP/PP reductions) once per step.
        self.model_config.no_sync_func = self.model.no_sync
        self.model_config.finalize_model_grads_func = finalize_model_grads

        self.optimizer = get_megatron_optimizer(
            OptimizerConfig(
                optimizer="adam", lr=train.lr, min_lr=train.min_lr, weight_decay=train.weight_decay,
                adam_beta1=train.adam_beta1, adam_beta2=train.adam_beta2, adam_eps=train.adam_eps,
                clip_grad=train.clip_grad, bf16=bf16, params_dtype=params_dtype(train),
                use_distributed_optimizer=parallel.distributed_optimizer,
            ),
            [self.model],
        )
        self.scheduler = build_lr_schedule(self.optimizer, train)
        self.forward_backward_func = get_forward_backward_func()

    @property
    def inference_model(self) -> torch.nn.Module:
        from model.unwrap import unwrap
        return unwrap(self.model)

    def _forward_step(self, data_iterator, model):
        batch = next(data_iterator)
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        output = model(batch["tokens"], position_ids=batch["position_ids"], labels=batch["labels"])
        return output, partial(_loss_func, batch["loss_mask"])

    def _run(self, micro_batches: MicroBatches, forward_only: bool) -> float:
        from megatron.core import parallel_state

        train = self.cfg.train
        chunks = self.schedule_chunks
        # Each virtual chunk (loop) reads the same micro-batches: stage 0 embeds them in every
        # loop, the last stage takes the labels in the last loop.
        iterators = [iter(micro_batches) for _ in chunks]
        outputs = self.forward_backward_func(
            forward_step_func=self._forward_step,
            data_iterator=iterators if len(chunks) > 1 else iterators[0],
            model=chunks,
            num_microbatches=len(micro_batches),
            seq_length=train.seq_length,
            micro_batch_size=train.micro_batch_size,
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
        return mean_of(totals)

    def train_step(self, micro_batches: MicroBatches) -> StepResult:
        self.model.train()
        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()
        # The schedule's step count is the number of the step being taken (1-based), so the first
        # update already has a warm-up LR above zero and step `max_steps` ends at min_lr.
        self.scheduler.step(increment=1)
        lr = float(self.optimizer.param_groups[0]["lr"])
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
    def evaluate(self, micro_batches: MicroBatches) -> float:
        self.model.eval()
        loss = self._run(micro_batches, forward_only=True)
        self.model.train()
        return loss

    # -- checkpoint payload -------------------------------------------------------------------
    def prepare_saving(self) -> None:
        megatron_results_queue.start_results_queue()

    def save_payload(self, folder: str, async_save: bool = False):
        return megatron_checkpoint.save(folder, self.model, self.optimizer, async_save)

    def load_payload(self, folder: str, saved: dict, weights_only: bool) -> None:
        megatron_checkpoint.load(folder, self.model, None if weights_only else self.optimizer)
        if weights_only:
            # megatron's optimizer keeps its own fp32 copy only under bf16; refresh it.
            for optimizer in getattr(self.optimizer, "chained_optimizers", [self.optimizer]):
                if hasattr(optimizer, "reload_model_params"):
                    optimizer.reload_model_params()


def _loss_func(loss_mask: torch.Tensor, output_tensor: torch.Tensor):
    """What megatron's schedules call on each micro-batch's per-token losses: the mean for the
    backward, plus (sum, count) for the step's exact token-weighted loss."""
    loss, sum_and_count = token_weighted_loss(output_tensor, loss_mask)
    return loss, {"loss_sum_and_tokens": sum_and_count}
