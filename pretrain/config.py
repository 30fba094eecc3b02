"""The one schema of a run: dataclasses registered with Hydra's ConfigStore, filled by `conf/`.

Hydra merges the YAML of `conf/config.yaml` (and its groups) onto `Config`, so an unknown key or a
value of the wrong type fails at start with the key's full name (`train.max_stepz`,
`train.seq_length=abc`). What one field cannot say on its own (the global batch against micro batch x
data-parallel size, tp against the heads) is checked by `validate()` before anything is built; every
message names the keys and the fix.

Nodes: `model` (model/config.py: ModelConfig), `data` (data/config.py: DataConfig), `train`,
`parallel`, `checkpoint`, `eval`, `logging`, `sample`, `deepspeed`, `launch`, plus `run_dir` and
`engine`. Key names are a contract (shared/ARCHITECTURE.md): renaming one breaks tools and tests.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore

from data.config import DataConfig
from launch.config import LaunchConfig
from model.config import ConfigError, ModelConfig

__all__ = ["Config", "ConfigError", "validate", "data_parallel_size", "register"]


@dataclass
class TrainConfig:
    max_steps: int = 300
    global_batch_size: int = 8          # samples per optimizer step, all ranks together
    micro_batch_size: int = 8           # samples per forward/backward on one rank
    seq_length: int = 128
    seed: int = 1234
    # Adam (PLT_SPEC "The LoopCoder-v2 7B family": betas 0.9/0.95, wd 0.1, clip 1.0).
    lr: float = 3.0e-3                  # peak LR after warm-up
    min_lr: float = 3.0e-4              # floor of the cosine decay
    warmup_steps: int = 20              # linear warm-up from 0 to lr
    decay_steps: Optional[int] = None   # cosine from lr to min_lr over these steps (None: max_steps)
    weight_decay: float = 0.1
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1.0e-8
    clip_grad: float = 1.0
    # auto: bf16 mixed precision (fp32 master weights) on GPU, fp32 on CPU. Or fp32 | bf16.
    precision: str = "auto"
    # Peak dense FLOP/s per device (in TFLOP/s) for MFU. None: 989 on GPU (H100/H200 dense bf16), on
    # CPU an assumed 0.1 per thread (pretrain/flops.py says why).
    peak_tflops: Optional[float] = None
    # Steps with a non-finite loss or gradient norm are skipped (no update) and counted; this many
    # in a row stop the run with a message naming the last checkpoint.
    max_skipped_steps: int = 5


@dataclass
class ParallelConfig:
    tp: int = 1                          # tensor parallel size
    pp: int = 1                          # pipeline parallel size
    vpp: Optional[int] = None            # virtual pipeline stages per rank (interleaved schedule)
    sequence_parallel: bool = False      # needs tp > 1
    distributed_optimizer: bool = False  # shard optimizer state over data-parallel ranks (ZeRO-1)
    overlap_grad_reduce: bool = False
    backend: str = "auto"                # auto (nccl on GPU, gloo on CPU) | nccl | gloo


@dataclass
class CheckpointConfig:
    dir: str = "${run_dir}/checkpoints"
    interval: int = 100                  # steps between saves (0: only at the end / on a signal)
    keep: int = 2                        # newest iter_* folders kept (0: keep all)
    resume: str = "auto"                 # auto (latest in dir, if any) | none | PATH of an iter_ folder
    save_final: bool = True
    # Write the tensors in the background (megatron-core's async dist_checkpointing) while training
    # goes on; `latest` moves once every rank's part is on disk and verified. bench/bench_checkpoint.py.
    async_save: bool = False


@dataclass
class EvalConfig:
    interval: int = 50                   # steps between validation losses (0: never)


@dataclass
class DiagnosticsConfig:
    # Steps between the per-loop diagnostics on the held-out batch (model/diagnostics.py; 0: never).
    # Computed with parallel.pp = 1 only (every loop's hidden states must be on one rank).
    interval: int = 0
    attention_queries: int = 64          # query positions for the attention metrics (0: skip them)


@dataclass
class WandbConfig:
    mode: str = "offline"                # offline (files under run_dir/wandb) | online | disabled
    project: str = "loopcoder"
    entity: Optional[str] = None
    name: Optional[str] = None           # None: the run folder's name


@dataclass
class LoggingConfig:
    interval: int = 10                   # steps between console lines / metrics.jsonl rows
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class SampleConfig:
    """The code sample printed at the end of the run (model/generation.py: sample)."""

    prompt: str = "def fibonacci(n):\n"
    max_new_tokens: int = 64             # 0: no sample
    temperature: float = 0.0             # 0: greedy
    top_p: float = 1.0


@dataclass
class DeepSpeedConfig:
    """Read only under engine=deepspeed (pretrain/deepspeed_engine.py)."""

    zero_stage: int = 1                  # 0 (plain DP) | 1 optimizer | 2 + gradients | 3 + weights
    offload_optimizer: str = "none"      # none | cpu (ZeRO-Offload: optimizer state and step on CPU)
    offload_param: str = "none"          # none | cpu (ZeRO-3 only: weights on CPU between uses)
    overlap_comm: bool = False           # overlap gradient reduction with the backward pass


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    engine: str = "megatron"             # megatron | deepspeed
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    # Owned by the SLURM launcher (launch/, conf/launch/); the trainer never reads it, but it is
    # typed here like every other node so a typo in launch.* fails at start too.
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    # Everything a run writes: config.yaml, metrics.jsonl, checkpoints/, wandb/, the Hydra log.
    run_dir: str = "outputs/${now:%Y-%m-%d_%H-%M-%S}"


def register() -> None:
    ConfigStore.instance().store(name="base_config", node=Config)


register()


def data_parallel_size(cfg: Config, world_size: int) -> int:
    return world_size // (cfg.parallel.tp * cfg.parallel.pp)


def validate(cfg: Config, world_size: int) -> None:
    """Refuse combinations no single field can catch. Raises ConfigError naming the keys."""

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    t, p, m = cfg.train, cfg.parallel, cfg.model
    for key, value in [("train.max_steps", t.max_steps), ("train.global_batch_size", t.global_batch_size),
                       ("train.micro_batch_size", t.micro_batch_size), ("train.seq_length", t.seq_length),
                       ("parallel.tp", p.tp), ("parallel.pp", p.pp)]:
        need(value >= 1, f"{key}={value}; it must be >= 1")
    need(world_size % (p.tp * p.pp) == 0,
         f"the world size {world_size} is not divisible by parallel.tp * parallel.pp = "
         f"{p.tp} * {p.pp}; launch a multiple of {p.tp * p.pp} processes or change parallel.tp/pp")
    dp = data_parallel_size(cfg, world_size)
    need(t.global_batch_size % (t.micro_batch_size * dp) == 0,
         f"train.global_batch_size={t.global_batch_size} is not divisible by train.micro_batch_size "
         f"* data-parallel size = {t.micro_batch_size} * {dp} = {t.micro_batch_size * dp}; pick a "
         f"global batch that is a multiple of {t.micro_batch_size * dp}")
    need(m.num_attention_heads % p.tp == 0,
         f"parallel.tp={p.tp} does not divide model.num_attention_heads={m.num_attention_heads}")
    need(m.num_layers % p.pp == 0,
         f"parallel.pp={p.pp} does not divide model.num_layers={m.num_layers}")
    # PLT pipelines its loops: each loop is a virtual chunk over the stage's layers
    # (model/pipeline.py), so the only virtual pipeline size is model.num_loops.
    need(p.pp == 1 or p.vpp is None or p.vpp == m.num_loops,
         f"parallel.vpp={p.vpp}: with parallel.pp > 1 the loops are the virtual pipeline chunks; "
         f"use parallel.vpp=null or parallel.vpp={m.num_loops} (model.num_loops)")
    need(not (p.pp > 1 and m.num_loops > 1 and p.overlap_grad_reduce),
         "parallel.overlap_grad_reduce=true with parallel.pp > 1 and model.num_loops > 1: every "
         "loop's chunk adds to the same shared weights, so a gradient bucket is complete only "
         "after the last loop's backward; set parallel.overlap_grad_reduce=false")
    need(not p.sequence_parallel or p.tp > 1,
         "parallel.sequence_parallel=true needs parallel.tp > 1")
    need(p.backend in ("auto", "nccl", "gloo"),
         f"parallel.backend={p.backend!r}; use auto, nccl or gloo")
    need(t.seq_length <= m.max_position_embeddings,
         f"train.seq_length={t.seq_length} exceeds model.max_position_embeddings="
         f"{m.max_position_embeddings}")
    need(t.precision in ("auto", "fp32", "bf16"),
         f"train.precision={t.precision!r}; use auto, fp32 or bf16")
    need(0 <= t.min_lr <= t.lr, f"train.min_lr={t.min_lr} must be in [0, train.lr={t.lr}]")
    need(t.warmup_steps >= 0, f"train.warmup_steps={t.warmup_steps}; it must be >= 0")
    decay = t.decay_steps if t.decay_steps is not None else t.max_steps
    decay_key = "train.decay_steps" if t.decay_steps is not None else "train.max_steps (the decay length)"
    need(decay > t.warmup_steps,
         f"{decay_key}={decay} must exceed train.warmup_steps={t.warmup_steps}; lower the warm-up")
    need(cfg.checkpoint.keep >= 0, f"checkpoint.keep={cfg.checkpoint.keep}; it must be >= 0")
    need(cfg.checkpoint.interval >= 0, f"checkpoint.interval={cfg.checkpoint.interval}; use >= 0")
    resume = cfg.checkpoint.resume
    need(resume in ("auto", "none") or os.path.isdir(resume),
         f"checkpoint.resume={resume!r} is neither auto, none nor an existing checkpoint folder")
    need(cfg.eval.interval >= 0, f"eval.interval={cfg.eval.interval}; it must be >= 0")
    need(cfg.logging.interval >= 1, f"logging.interval={cfg.logging.interval}; it must be >= 1")
    need(cfg.logging.wandb.mode in ("offline", "online", "disabled"),
         f"logging.wandb.mode={cfg.logging.wandb.mode!r}; use offline, online or disabled")
    need(cfg.engine in ("megatron", "deepspeed"),
         f"engine={cfg.engine!r}; use megatron or deepspeed")
    if cfg.engine == "deepspeed":
        from pretrain.deepspeed_engine import validate_deepspeed
        validate_deepspeed(cfg)
