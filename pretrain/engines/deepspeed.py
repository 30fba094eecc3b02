"""The DeepSpeed ZeRO engine (`engine=deepspeed`): the same PLT model, data, LR schedule and
Checkpointer as the megatron engine (pretrain/engines/megatron.py), data-parallel only, with
ZeRO stage 0-3 and optional CPU offload.

What is taken from megatron so that the two engines train the same model the same way: the model
(PLTModel at TP=PP=1; megatron's parallel_state must be initialized, pretrain/distributed.py does it),
its seeded init (`use_cpu_initialization` as the megatron engine sets it, so both start from the same
weights), megatron's parameter groups (no weight decay on biases and norms) for a torch AdamW, and
the shared LR schedule (pretrain/engines/base.py) driving that optimizer's groups. DeepSpeed does
the rest: ZeRO partitioning, gradient accumulation (loss / GAS per micro-batch, like megatron's
schedules), the data-parallel average, global-norm clipping, bf16 with fp32 master weights.

The optimizer is torch's AdamW handed to `deepspeed.initialize` (a client optimizer): DeepSpeed's own
FusedAdam / DeepSpeedCPUAdam are C++/CUDA ops it JIT-builds with ninja on first use, which on CPU
machines means a compiler and minutes per process; torch's AdamW needs nothing and is what the
megatron engine uses where apex/Transformer Engine are absent. On CPU DeepSpeed picks its CPU
accelerator and talks through torch.distributed's gloo group that pretrain/distributed.py created.

Not supported (refused at config time: check_config below): parallel.tp/pp > 1, vpp, sequence
parallelism, megatron's distributed optimizer (use deepspeed.zero_stage instead). Its checkpoint
payload is DeepSpeed's own files (pretrain/engines/deepspeed_checkpoint.py).
"""

from __future__ import annotations

import os
from typing import Dict

import torch

from model.config import require
from pretrain.engines import deepspeed_checkpoint
from pretrain.engines.base import (Engine, MicroBatches, StepResult, build_lr_schedule, mean_of,
                                   model_config_of, token_weighted_loss, use_bf16)
from pretrain.engines.deepspeed_package import (DEEPSPEED_INSTALL_HINT, deepspeed_installed,
                                                import_deepspeed)


def check_config(cfg) -> None:
    """What the DeepSpeed engine cannot do, named with the fix (the engine table,
    pretrain/engines/__init__.py, hands it to pretrain/config.py validate())."""
    parallel, ds = cfg.parallel, cfg.deepspeed
    require(parallel.tp == 1 and parallel.pp == 1,
            f"engine=deepspeed runs data parallel only (ZeRO), but parallel.tp={parallel.tp} "
            f"parallel.pp={parallel.pp}; use parallel.tp=1 parallel.pp=1, or engine=megatron for "
            f"TP/PP")
    require(parallel.vpp is None,
            f"parallel.vpp={parallel.vpp} needs pipeline parallelism; engine=deepspeed has "
            f"none: use parallel.vpp=null or engine=megatron")
    require(not parallel.sequence_parallel,
            "parallel.sequence_parallel=true needs tensor parallelism; "
            "engine=deepspeed has none: use engine=megatron")
    require(not parallel.distributed_optimizer,
            "parallel.distributed_optimizer=true is megatron's ZeRO-1; with engine=deepspeed use "
            "deepspeed.zero_stage=1 (or 2, 3) and parallel.distributed_optimizer=false")
    require(not parallel.overlap_grad_reduce,
            "parallel.overlap_grad_reduce=true is a megatron DDP option; with engine=deepspeed leave "
            "it false (DeepSpeed's deepspeed.overlap_comm does the same)")
    ds.validate()  # the node's own rules (pretrain/config.py DeepSpeedConfig)
    require(deepspeed_installed(), DEEPSPEED_INSTALL_HINT)


def deepspeed_config(cfg, data_parallel: int, bf16: bool) -> dict:
    """Our config as DeepSpeed's JSON config (what deepspeed.initialize(config=...) reads)."""
    train, ds = cfg.train, cfg.deepspeed
    zero = {"stage": ds.zero_stage, "overlap_comm": ds.overlap_comm}
    if ds.offload_optimizer != "none":
        zero["offload_optimizer"] = {"device": ds.offload_optimizer}
    if ds.offload_param != "none":
        zero["offload_param"] = {"device": ds.offload_param}
    return {
        "train_batch_size": train.global_batch_size,
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": (train.global_batch_size
                                        // (train.micro_batch_size * data_parallel)),
        "gradient_clipping": train.clip_grad,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        "fp16": {"enabled": False},
        # Accumulate and reduce gradients in fp32, as megatron's DDP does (grad_reduce_in_fp32).
        "data_types": {"grad_accum_dtype": "fp32"},
        # torch's AdamW as the client optimizer (module docstring): allowed under ZeRO and offload.
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2 ** 31 - 1,   # our metrics log the steps; DeepSpeed stays quiet
        "wall_clock_breakdown": False,
    }


def skip_shm_comm_build(deepspeed) -> None:
    """Keep DeepSpeed from JIT-compiling its shared-memory all-reduce op on CPU.

    On its CPU accelerator DeepSpeed's torch backend builds `deepspeed_shm_comm` (C++, ninja, g++:
    about two minutes per fresh machine, then cached under ~/.cache/torch_extensions) when it is
    created. Only `inference_all_reduce` uses that op; training goes through torch.distributed's
    gloo calls either way. DeepSpeed keeps its probe of compatible ops in one module-level dict and
    reads it before building, so marking the op incompatible there skips the build.
    """
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


class DeepSpeedEngine(Engine):
    name = "deepspeed"

    def __init__(self, cfg, device: torch.device, layout):
        super().__init__(cfg, device)
        deepspeed = import_deepspeed()
        from megatron.core.optimizer import OptimizerConfig, _get_param_groups

        from model import PLTModel
        from pretrain.distributed import env_world

        train = cfg.train
        bf16 = use_bf16(train)
        # Built as the megatron engine builds it (same dtype, same init device), so both start from
        # the same weights; under bf16 DeepSpeed keeps the fp32 master copies, as megatron does.
        self.model_config = model_config_of(cfg, device, layout)
        module = PLTModel(self.model_config)
        if device.type == "cuda":
            module.cuda(device)
        # megatron's groups: weight decay on matrices only (wd_mult 0 on biases and norms), with
        # the max_lr/min_lr keys its scheduler reads. Same AdamW the megatron engine gets on CPU.
        param_groups = _get_param_groups(
            [module], OptimizerConfig(optimizer="adam", lr=train.lr, min_lr=train.min_lr,
                                      weight_decay=train.weight_decay), None)
        param_groups = [g for g in param_groups if g["params"]]
        optimizer = torch.optim.AdamW(param_groups, lr=train.lr, weight_decay=train.weight_decay,
                                      betas=(train.adam_beta1, train.adam_beta2),
                                      eps=train.adam_eps)
        if device.type != "cuda":
            skip_shm_comm_build(deepspeed)
        # DeepSpeed asserts torchrun's LOCAL_RANK, which a single process or srun does not set;
        # torch.distributed is already up (pretrain/distributed.py), so it only describes it.
        os.environ.setdefault("LOCAL_RANK", str(env_world()[2]))
        self.ds_config = deepspeed_config(cfg, layout.dp, bf16)
        # Without ZeRO and bf16 DeepSpeed clips through torch but drops the norm it measured; then
        # we clip (after its gradient all-reduce, before its optimizer step) and keep the norm.
        self._clip_here = cfg.deepspeed.zero_stage == 0 and not bf16
        if self._clip_here:
            self.ds_config["gradient_clipping"] = 0.0
        self.model, self.optimizer, _, _ = deepspeed.initialize(
            model=module, optimizer=optimizer, config=self.ds_config,
            dist_init_required=False)
        # The schedule drives the client optimizer's groups; ZeRO steps that same torch optimizer
        # over its partitions, so lr/weight_decay set here are the ones used.
        self.scheduler = build_lr_schedule(optimizer, train)
        self._client_optimizer = optimizer

    @property
    def inference_model(self) -> torch.nn.Module:
        """The bare PLTModel. Under ZeRO-3 its parameters are partitions that DeepSpeed's module
        hooks gather around each forward, so every rank must call it together (the trainer's
        end-of-run sample does); reading weights directly needs full_state_dict()."""
        return self.model.module

    def num_parameters(self) -> int:
        # Under ZeRO-3 a parameter holds a partition; ds_numel is the whole parameter's size.
        return sum(getattr(p, "ds_numel", p.numel()) for p in self.model.module.parameters())

    def _losses(self, batch: Dict[str, torch.Tensor]):
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        losses = self.model(batch["tokens"], position_ids=batch["position_ids"],
                            labels=batch["labels"])
        return token_weighted_loss(losses, batch["loss_mask"])

    def _global_mean(self, totals: torch.Tensor) -> float:
        torch.distributed.all_reduce(totals)
        return mean_of(totals)

    def train_step(self, micro_batches: MicroBatches) -> StepResult:
        self.model.train()
        # As in the megatron engine: the schedule counts the step being taken (1-based).
        self.scheduler.step(increment=1)
        lr = float(self._client_optimizer.param_groups[0]["lr"])
        skipped_before = self.model.skipped_steps
        totals = torch.zeros(2, dtype=torch.float64, device=self.device)
        grad_norm = None
        for index, batch in enumerate(micro_batches):
            loss, sum_and_count = self._losses(batch)
            # DeepSpeed divides by gradient_accumulation_steps (the number of micro-batches) and
            # steps the optimizer on the last one (the accumulation boundary).
            self.model.backward(loss)
            if self._clip_here and index == len(micro_batches) - 1:
                grad_norm = torch.nn.utils.clip_grad_norm_(self.model.module.parameters(),
                                                           self.cfg.train.clip_grad)
            self.model.step()
            totals += sum_and_count.to(torch.float64)
        if grad_norm is None:
            grad_norm = self.model.get_global_grad_norm()
        grad_norm = float(grad_norm) if grad_norm is not None else 0.0
        return StepResult(loss=self._global_mean(totals), grad_norm=grad_norm, lr=lr,
                          skipped=self.model.skipped_steps > skipped_before)

    @torch.no_grad()
    def evaluate(self, micro_batches: MicroBatches) -> float:
        self.model.eval()
        totals = torch.zeros(2, dtype=torch.float64, device=self.device)
        for batch in micro_batches:
            totals += self._losses(batch)[1].to(torch.float64)
        self.model.train()
        return self._global_mean(totals)

    # -- checkpoint payload -------------------------------------------------------------------
    def payload_state(self) -> dict:
        return {"zero_stage": self.cfg.deepspeed.zero_stage}

    def save_payload(self, folder: str, async_save: bool = False):
        deepspeed_checkpoint.save(folder, self.model)
        return None  # DeepSpeed writes synchronously

    def load_payload(self, folder: str, saved: dict, weights_only: bool) -> None:
        if weights_only:
            self.load_full_state_dict(deepspeed_checkpoint.read_module_file(folder))
        else:
            deepspeed_checkpoint.load(folder, self.model, saved, self.cfg.deepspeed.zero_stage,
                                      self.cfg.checkpoint.allow_pickle)

    # -- whole weights ------------------------------------------------------------------------
    def full_state_dict(self) -> Dict[str, torch.Tensor]:
        """The model's full weights on every rank (gathered under ZeRO-3), without extra state."""
        deepspeed = import_deepspeed()
        module = self.model.module
        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            return {k: v.detach().clone().cpu() for k, v in module.state_dict().items()
                    if not k.endswith("_extra_state")}

    def load_full_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        """Set the model's weights (and ZeRO's fp32 master copies) from a full state dict."""
        deepspeed = import_deepspeed()
        module = self.model.module
        params = dict(module.named_parameters())
        expected = set(params) | {k for k, _ in module.named_buffers()}
        missing, unexpected = expected - set(state), set(state) - expected
        if missing or unexpected:
            raise RuntimeError(f"model keys missing {sorted(missing)}, unexpected {sorted(unexpected)}")
        with deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=0):
            with torch.no_grad():
                for name, tensor in module.state_dict(keep_vars=True).items():
                    if name in state:
                        tensor.data.copy_(state[name].to(tensor.dtype))
        if hasattr(self.optimizer, "refresh_fp32_params"):
            self.optimizer.refresh_fp32_params()
