"""The DeepSpeed ZeRO engine (`engine=deepspeed`): the same PLT model, data, LR schedule and
checkpoint cadence as the megatron engine (pretrain/engine.py), data-parallel only, with ZeRO
stage 0-3 and optional CPU offload. The trainer sees the same small interface:

    engine = DeepSpeedEngine(cfg, device)
    result = engine.train_step(micro_batches)    # StepResult(loss, grad_norm, lr, skipped)
    loss = engine.evaluate(micro_batches)
    engine.optimizer, engine.scheduler, engine.inference_model, engine.current_lr
    save_checkpoint(...) / load_checkpoint(...)  # DeepSpeed's own format, our layout around it

What is taken from megatron so that the two engines train the same model the same way: the model
(PLTModel at TP=PP=1; megatron's parallel_state must be initialized, pretrain/distributed.py does it),
its seeded init (`use_cpu_initialization` as the megatron engine sets it, so both start from the same
weights), megatron's parameter groups (no weight decay on biases and norms) for a torch AdamW, and
megatron's OptimizerParamScheduler (warm-up + cosine) driving that optimizer's groups. DeepSpeed does
the rest: ZeRO partitioning, gradient accumulation (loss / GAS per micro-batch, like megatron's
schedules), the data-parallel average, global-norm clipping, bf16 with fp32 master weights.

The optimizer is torch's AdamW handed to `deepspeed.initialize` (a client optimizer): DeepSpeed's own
FusedAdam / DeepSpeedCPUAdam are C++/CUDA ops it JIT-builds with ninja on first use, which on CPU
machines means a compiler and minutes per process; torch's AdamW needs nothing and is what the
megatron engine uses where apex/Transformer Engine are absent. On CPU DeepSpeed picks its CPU
accelerator and talks through torch.distributed's gloo group that pretrain/distributed.py created.

Not supported (refused at config time, see `validate_deepspeed`): parallel.tp/pp > 1, vpp,
sequence parallelism, megatron's distributed optimizer (use deepspeed.zero_stage instead).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
from typing import Dict, List

import torch

from model.config import ConfigError

log = logging.getLogger(__name__)

DEEPSPEED_PIN = "deepspeed==0.19.8"
INSTALL_HINT = (f"engine=deepspeed needs the DeepSpeed package: pip install 'loopcoder[deepspeed]' "
                f"(or pip install {DEEPSPEED_PIN} --no-build-isolation, torch already installed)")
MODEL_FILE = "mp_rank_00_model_states.pt"   # DeepSpeed's name for the (TP rank 0) module file


def deepspeed_available() -> bool:
    return importlib.util.find_spec("deepspeed") is not None


def import_deepspeed():
    try:
        import deepspeed
    except ImportError as error:
        raise ImportError(INSTALL_HINT) from error
    return deepspeed


def validate_deepspeed(cfg) -> None:
    """Refuse what this engine cannot do, naming the key and the fix (called by config.validate)."""
    p, d = cfg.parallel, cfg.deepspeed

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    need(p.tp == 1 and p.pp == 1,
         f"engine=deepspeed runs data parallel only (ZeRO), but parallel.tp={p.tp} "
         f"parallel.pp={p.pp}; use parallel.tp=1 parallel.pp=1, or engine=megatron for TP/PP")
    need(p.vpp is None, f"parallel.vpp={p.vpp} needs pipeline parallelism; engine=deepspeed has "
                        f"none: use parallel.vpp=null or engine=megatron")
    need(not p.sequence_parallel, "parallel.sequence_parallel=true needs tensor parallelism; "
                                  "engine=deepspeed has none: use engine=megatron")
    need(not p.distributed_optimizer,
         "parallel.distributed_optimizer=true is megatron's ZeRO-1; with engine=deepspeed use "
         "deepspeed.zero_stage=1 (or 2, 3) and parallel.distributed_optimizer=false")
    need(not p.overlap_grad_reduce,
         "parallel.overlap_grad_reduce=true is a megatron DDP option; with engine=deepspeed leave it "
         "false (DeepSpeed's deepspeed.overlap_comm does the same)")
    need(d.zero_stage in (0, 1, 2, 3), f"deepspeed.zero_stage={d.zero_stage}; use 0, 1, 2 or 3")
    need(d.offload_optimizer in ("none", "cpu"),
         f"deepspeed.offload_optimizer={d.offload_optimizer!r}; use none or cpu")
    need(d.offload_param in ("none", "cpu"),
         f"deepspeed.offload_param={d.offload_param!r}; use none or cpu")
    need(d.offload_optimizer == "none" or d.zero_stage >= 1,
         f"deepspeed.offload_optimizer=cpu needs deepspeed.zero_stage >= 1 (it is {d.zero_stage})")
    need(d.offload_param == "none" or d.zero_stage == 3,
         f"deepspeed.offload_param=cpu needs deepspeed.zero_stage=3 (it is {d.zero_stage})")
    need(deepspeed_available(), INSTALL_HINT)


def deepspeed_config(cfg, data_parallel: int, bf16: bool) -> dict:
    """Our config as DeepSpeed's JSON config (what deepspeed.initialize(config=...) reads)."""
    t, d = cfg.train, cfg.deepspeed
    zero = {"stage": d.zero_stage, "overlap_comm": d.overlap_comm}
    if d.offload_optimizer != "none":
        zero["offload_optimizer"] = {"device": d.offload_optimizer}
    if d.offload_param != "none":
        zero["offload_param"] = {"device": d.offload_param}
    return {
        "train_batch_size": t.global_batch_size,
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": t.global_batch_size // (t.micro_batch_size * data_parallel),
        "gradient_clipping": t.clip_grad,
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


class DeepSpeedEngine:
    def __init__(self, cfg, device: torch.device):
        deepspeed = import_deepspeed()
        from megatron.core import parallel_state
        from megatron.core.optimizer import OptimizerConfig, _get_param_groups
        from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

        from model import PLTModel
        from pretrain.engine import use_bf16

        self.cfg, self.device = cfg, device
        t = cfg.train
        bf16 = use_bf16(cfg)
        on_gpu = device.type == "cuda"
        # Built as the megatron engine builds it (same dtype, same init device), so both start from
        # the same weights; under bf16 DeepSpeed keeps the fp32 master copies, as megatron does.
        self.model_config = cfg.model.build(
            params_dtype=torch.bfloat16 if bf16 else torch.float32,
            use_cpu_initialization=not on_gpu)
        module = PLTModel(self.model_config)
        if on_gpu:
            module.cuda(device)
        # megatron's groups: weight decay on matrices only (wd_mult 0 on biases and norms), with
        # the max_lr/min_lr keys its scheduler reads. Same AdamW the megatron engine gets on CPU.
        param_groups = _get_param_groups(
            [module], OptimizerConfig(optimizer="adam", lr=t.lr, min_lr=t.min_lr,
                                      weight_decay=t.weight_decay), None)
        param_groups = [g for g in param_groups if g["params"]]
        optimizer = torch.optim.AdamW(param_groups, lr=t.lr, weight_decay=t.weight_decay,
                                      betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_eps)
        if not on_gpu:
            skip_shm_comm_build(deepspeed)
        # DeepSpeed asserts torchrun's LOCAL_RANK, which a single process or srun does not set;
        # torch.distributed is already up (pretrain/distributed.py), so it only describes it.
        from pretrain.distributed import env_world
        os.environ.setdefault("LOCAL_RANK", str(env_world()[2]))
        data_parallel = parallel_state.get_data_parallel_world_size()
        self.ds_config = deepspeed_config(cfg, data_parallel, bf16)
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
        decay_steps = t.decay_steps if t.decay_steps is not None else t.max_steps
        self.scheduler = OptimizerParamScheduler(
            optimizer, init_lr=0.0, max_lr=t.lr, min_lr=t.min_lr,
            lr_warmup_steps=t.warmup_steps, lr_decay_steps=decay_steps, lr_decay_style="cosine",
            start_wd=t.weight_decay, end_wd=t.weight_decay, wd_incr_steps=decay_steps,
            wd_incr_style="constant",
            use_checkpoint_opt_param_scheduler=False, override_opt_param_scheduler=True,
        )
        self._client_optimizer = optimizer
        self.model_chunks = [self.model]

    @property
    def inference_model(self) -> torch.nn.Module:
        """The bare PLTModel. Under ZeRO-3 its parameters are partitions that DeepSpeed's module
        hooks gather around each forward, so every rank must call it together (the trainer's
        end-of-run sample does); reading weights directly needs full_state_dict()."""
        return self.model.module

    @property
    def current_lr(self) -> float:
        return float(self._client_optimizer.param_groups[0]["lr"])

    def _losses(self, batch: Dict[str, torch.Tensor]):
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        losses = self.model(batch["tokens"], position_ids=batch["position_ids"],
                            labels=batch["labels"]).float()
        mask = batch["loss_mask"].float()
        loss_sum, num_tokens = (losses * mask).sum(), mask.sum()
        return loss_sum / num_tokens.clamp(min=1), torch.stack([loss_sum.detach(), num_tokens])

    def _global_mean(self, totals: torch.Tensor) -> float:
        torch.distributed.all_reduce(totals)
        return float(totals[0] / totals[1].clamp(min=1))

    def train_step(self, micro_batches: List[Dict[str, torch.Tensor]]) -> StepResult:
        from pretrain.engine import StepResult

        self.model.train()
        # As in the megatron engine: the schedule counts the step being taken (1-based).
        self.scheduler.step(increment=1)
        lr = self.current_lr
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
    def evaluate(self, micro_batches: List[Dict[str, torch.Tensor]]) -> float:
        self.model.eval()
        totals = torch.zeros(2, dtype=torch.float64, device=self.device)
        for batch in micro_batches:
            totals += self._losses(batch)[1].to(torch.float64)
        self.model.train()
        return self._global_mean(totals)

    # -- whole weights, for checkpoint conversion --------------------------------------------
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


# -- checkpoints ------------------------------------------------------------------------------
# Layout of checkpoint.dir under engine=deepspeed (the same iter_/latest frame as the megatron one):
#
#   latest                           "iter_0000200", replaced atomically after every rank finished
#   iter_0000200/
#       mp_rank_00_model_states.pt   DeepSpeed: the module (+ DeepSpeed's bookkeeping)
#       *_optim_states.pt            DeepSpeed: ZeRO partitions of fp32 weights and Adam moments
#       loopcoder.json               step, consumed_samples, scheduler, data position, model shape,
#                                    "engine": "deepspeed", zero stage, world size
#       config.yaml, rng/rank_XXXXX.pt   as in the megatron layout
#
# DeepSpeed writes into `.tmp_iter_X/` (tag = that name, save_latest=False); then the folder is
# renamed and `latest` replaced exactly as pretrain/checkpoint.py does. DeepSpeed's own loader
# unpickles its files (torch.load(weights_only=False)): load only checkpoints you wrote.


def save_checkpoint(root: str, step: int, engine: DeepSpeedEngine, loader, config_yaml: str,
                    keep: int, model_fields: dict) -> str:
    from pretrain import checkpoint

    name = checkpoint.iter_name(step)
    final, tmp_name = os.path.join(root, name), f".tmp_{name}"
    tmp = os.path.join(root, tmp_name)
    rank = torch.distributed.get_rank()
    if rank == 0:
        os.makedirs(root, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    torch.distributed.barrier()
    engine.model.save_checkpoint(root, tag=tmp_name, client_state={}, save_latest=False)
    os.makedirs(os.path.join(tmp, "rng"), exist_ok=True)
    torch.save(checkpoint.rng_state(), os.path.join(tmp, "rng", f"rank_{rank:05d}.pt"))
    if rank == 0:
        state = {
            "step": step,
            "consumed_samples": loader.consumed_samples,
            "scheduler": engine.scheduler.state_dict(),
            "data": loader.state_dict(),
            "model": model_fields,
            "world_size": torch.distributed.get_world_size(),
            "engine": "deepspeed",
            "zero_stage": engine.cfg.deepspeed.zero_stage,
        }
        with open(os.path.join(tmp, checkpoint.STATE_FILE), "w") as stream:
            json.dump(state, stream, indent=1)
        with open(os.path.join(tmp, "config.yaml"), "w") as stream:
            stream.write(config_yaml)
    torch.distributed.barrier()
    if rank == 0:
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        checkpoint._write_latest(root, name)
        checkpoint._apply_retention(root, keep, protect=name)
    torch.distributed.barrier()
    return final


def load_checkpoint(path: str, engine: DeepSpeedEngine, loader, model_fields: dict) -> dict:
    """Restore weights, ZeRO optimizer state, schedule, data position and RNG from `path`.

    A weights-only checkpoint (converted from the megatron engine by pretrain/engine_convert.py)
    restores the weights and the trainer state; the Adam moments start from zero.
    """
    from pretrain import checkpoint

    path = os.path.normpath(path)
    state = checkpoint.read_trainer_state(path)
    checkpoint.check_model_fields(path, state["model"], model_fields)
    name = os.path.basename(path)
    if state.get("weights_only"):
        module_state = torch.load(os.path.join(path, MODEL_FILE), map_location="cpu",
                                  weights_only=True)["module"]
        engine.load_full_state_dict(module_state)
    else:
        saved_stage, stage = state.get("zero_stage"), engine.cfg.deepspeed.zero_stage
        world = torch.distributed.get_world_size()
        if saved_stage != stage or state["world_size"] != world:
            raise ConfigError(
                f"checkpoint {name} was written with deepspeed.zero_stage={saved_stage} on "
                f"{state['world_size']} processes; this run has zero_stage={stage} on {world}. "
                f"Pass deepspeed.zero_stage={saved_stage} with {state['world_size']} processes, or "
                f"export the weights (python -m scripts.convert_checkpoint) and resume from them")
        loaded, _ = engine.model.load_checkpoint(os.path.dirname(path), tag=name,
                                                 load_optimizer_states=True,
                                                 load_lr_scheduler_states=False)
        if loaded is None:
            raise RuntimeError(f"DeepSpeed could not load the checkpoint {path}")
    engine.scheduler.load_state_dict(state["scheduler"])
    loader.load_state_dict(state["data"])
    rank = torch.distributed.get_rank()
    rng_file = os.path.join(path, "rng", f"rank_{rank:05d}.pt")
    if os.path.isfile(rng_file):
        checkpoint.set_rng_state(torch.load(rng_file, weights_only=True))
    else:
        log.warning("%s has no RNG state for rank %d; keeping this run's seeds", path, rank)
    return state
