"""What every training engine is to the trainer, and what the engines share.

    engine = build_engine(cfg, device, layout)   # pretrain/engines/__init__.py
    result = engine.train_step(micro_batches)    # StepResult(loss, grad_norm, lr, skipped)
    loss = engine.evaluate(micro_batches)        # mean next-token loss, no gradients
    engine.inference_model                       # the bare PLTModel (generation, diagnostics)
    engine.scheduler                             # the LR schedule (its state is checkpointed)
    engine.save_payload(folder) / load_payload(folder, ...)   # its files inside a checkpoint

Micro-batches are dicts with tokens, labels, loss_mask and position_ids ([mb, seq] tensors, from
data/loader.py). The model is anything returning per-token losses [b, s] when given labels; nothing
here knows about loops. The Checkpointer (pretrain/checkpoint/) owns everything around a
checkpoint (temp folder, collective failure decision, checksums, `latest`, retention, trainer
state, RNG); an engine supplies only its payload: the model and optimizer files, written, read and
checked in its own format.

Shared by the engines so that both train the same model the same way: the precision rule, the
token-weighted loss and the LR schedule (megatron's OptimizerParamScheduler: linear warm-up, cosine).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Dict, List

import torch

MicroBatches = List[Dict[str, torch.Tensor]]


@dataclass
class StepResult:
    loss: float          # token-weighted mean loss of the global batch (all data-parallel ranks)
    grad_norm: float     # global gradient norm before clipping
    lr: float            # the LR this step used
    skipped: bool        # no update: the loss or the gradients were not finite


def use_bf16(train_cfg) -> bool:
    """train.precision: auto is bf16 mixed precision on a GPU and fp32 on a CPU."""
    precision = train_cfg.precision
    return precision == "bf16" or (precision == "auto" and torch.cuda.is_available())


def params_dtype(train_cfg) -> torch.dtype:
    return torch.bfloat16 if use_bf16(train_cfg) else torch.float32


def token_weighted_loss(losses: torch.Tensor, loss_mask: torch.Tensor):
    """Per-token losses [b, s] -> (the micro-batch mean, [loss sum, token count]).

    The mean drives the backward; the sum and count add up exactly over micro-batches and
    data-parallel ranks into the step's token-weighted loss."""
    mask = loss_mask.float()
    loss_sum = (losses.float() * mask).sum()
    num_tokens = mask.sum()
    return loss_sum / num_tokens.clamp(min=1), torch.stack([loss_sum.detach(), num_tokens])


def mean_of(totals: torch.Tensor) -> float:
    """The loss of summed [loss sum, token count] pairs."""
    return float(totals[0] / totals[1].clamp(min=1))


def build_lr_schedule(optimizer, train_cfg):
    """Linear warm-up to train.lr, cosine decay to train.min_lr over decay_steps (max_steps when
    unset); constant weight decay. The config, not a checkpoint, sets these on resume (the step
    count is restored): a resumed run may change its schedule deliberately."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    decay_steps = (train_cfg.decay_steps if train_cfg.decay_steps is not None
                   else train_cfg.max_steps)
    return OptimizerParamScheduler(
        optimizer, init_lr=0.0, max_lr=train_cfg.lr, min_lr=train_cfg.min_lr,
        lr_warmup_steps=train_cfg.warmup_steps, lr_decay_steps=decay_steps, lr_decay_style="cosine",
        start_wd=train_cfg.weight_decay, end_wd=train_cfg.weight_decay, wd_incr_steps=decay_steps,
        wd_incr_style="constant",
        use_checkpoint_opt_param_scheduler=False, override_opt_param_scheduler=True,
    )


class Engine(abc.ABC):
    """A model, its optimizer and LR schedule, and one optimizer step over a global batch."""

    name: str                    # "megatron" | "deepspeed": recorded in every checkpoint

    def __init__(self, cfg, device: torch.device):
        self.cfg, self.device = cfg, device
        self.scheduler = None

    @abc.abstractmethod
    def train_step(self, micro_batches: MicroBatches) -> StepResult:
        """One optimizer step over this rank's micro-batches of a global batch."""

    @abc.abstractmethod
    def evaluate(self, micro_batches: MicroBatches) -> float:
        """The token-weighted mean loss over every rank's micro-batches, without gradients."""

    @property
    @abc.abstractmethod
    def inference_model(self) -> torch.nn.Module:
        """The bare PLTModel (no training wrappers), for generation and diagnostics."""

    def num_parameters(self) -> int:
        """Parameters of the model on this rank."""
        return sum(p.numel() for p in self.inference_model.parameters())

    # -- the checkpoint payload (pretrain/checkpoint/checkpointer.py calls these on every rank)
    def prepare_saving(self) -> None:
        """Before the first step of a run that will save: start what a save needs, so that the
        first one (perhaps the checkpoint on a stop signal) does not wait for it."""

    def payload_state(self) -> dict:
        """What this engine records about its payload in the checkpoint's loopcoder.json."""
        return {}

    @abc.abstractmethod
    def save_payload(self, folder: str, async_save: bool = False):
        """Write the model and optimizer into `folder` (every rank). With async_save an engine
        may return megatron's AsyncRequest whose writers finish in the background; else None."""

    @abc.abstractmethod
    def load_payload(self, folder: str, saved: dict, weights_only: bool) -> None:
        """Restore the model (and, unless weights_only, the optimizer) from `folder`. `saved` is
        the checkpoint's trainer state (loopcoder.json: world_size and what payload_state
        returned). Raise ConfigError with the fix when the payload cannot be loaded into this run
        (another ZeRO stage, say)."""


def model_config_of(cfg, device: torch.device, layout):
    """The PLTConfig both engines build: the model split as `layout` says (pretrain/layout.py
    ParallelLayout: tp, pp, the loops as virtual chunks, sequence parallelism), the run's
    precision, CPU initialisation on a CPU (so every layout and both engines start from the same
    seeded weights)."""
    return cfg.model.build(
        tensor_parallel=layout.tp, pipeline_parallel=layout.pp,
        virtual_pipeline_parallel=layout.vpp, sequence_parallel=layout.sequence_parallel,
        params_dtype=params_dtype(cfg.train), use_cpu_initialization=device.type != "cuda")
