"""The one schema of a run: dataclasses registered with Hydra's ConfigStore, filled by `conf/`.

Hydra merges the YAML of `conf/config.yaml` (and its groups) onto `Config`, so an unknown key or a
value of the wrong type fails at start with the key's full name (`train.max_stepz`,
`train.seq_length=abc`). What one field cannot say on its own (the global batch against micro batch x
data-parallel size, tp against the heads) is checked by `validate()` before anything is built; every
message names the keys and the fix.

Each default is stated here and only here; the YAML files in `conf/` state what a preset changes.
Nodes: `model` (model/config.py: ModelConfig), `data` (data/config.py: DataConfig), `train`,
`parallel`, `checkpoint`, `eval`, `diagnostics`, `logging`, `sample`, `deepspeed`, `launch`,
`debug`, `study` (pretrain/study.py), plus `run_dir` and `engine`. Key names are a contract (docs/architecture.md#contracts): renaming
one breaks tools and tests.
"""

from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass, field
from typing import List, Optional

from hydra.core.config_store import ConfigStore

from data.config import DataConfig
from evaluation.config import EvalCodeConfig, validate_code_config
from model.config import (CHANGEABLE_FIELDS, STRUCTURAL_FIELDS, ConfigError, ModelConfig,
                          require)
from model.pipeline import virtual_pipeline_size
from pretrain.resolvers import launch_time, register_resolvers  # noqa: F401  (launch_time: API)
from pretrain.study import StudyConfig

__all__ = ["Config", "ConfigError", "LaunchConfig", "compose", "validate", "data_parallel_size",
           "register"]

DEEPSPEED_PIN = "deepspeed==0.19.8"
DEEPSPEED_INSTALL_HINT = (
    f"engine=deepspeed needs the DeepSpeed package: pip install 'loopcoder[deepspeed]' "
    f"(or pip install {DEEPSPEED_PIN} --no-build-isolation, torch already installed)")


@dataclass
class TrainConfig:
    max_steps: int = 300
    global_batch_size: int = 8          # samples per optimizer step, all ranks together
    # Samples per forward/backward on one rank; the rest of a rank's share of the global batch is
    # gradient accumulation. None: the whole share (global batch / data-parallel size), settled by
    # validate() for the world size, so that any DP size that divides the global batch just works.
    micro_batch_size: Optional[int] = None
    seq_length: int = 128
    seed: int = 1234
    # Adam (docs/spec.md#the-loopcoder-v2-7b: betas 0.9/0.95, wd 0.1, clip 1.0).
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
    # Peak dense FLOP/s per device (in TFLOP/s) for MFU. None: model/flops.py's defaults (989 on a
    # GPU: H100/H200 dense bf16; on a CPU an assumed 0.1 per thread).
    peak_tflops: Optional[float] = None
    # Steps with a non-finite loss or gradient norm are skipped (no update) and counted; this many
    # in a row stop the run with a message naming the last checkpoint.
    max_skipped_steps: int = 5


@dataclass
class ParallelConfig:
    tp: int = 1                          # tensor parallel size
    pp: int = 1                          # pipeline parallel size
    vpp: Optional[int] = None            # virtual pipeline stages per rank (PLT: null or num_loops)
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
    # Start from another model's weights at step 0 (fresh optimizer, schedule, data order): a
    # Hugging Face dir in a published LoopCoder layout or a loopcoder checkpoint of either engine.
    # Used only when checkpoint.dir has no checkpoint to resume (pretrain/checkpoint/init.py).
    init_from: Optional[str] = None
    save_final: bool = True
    # Write the tensors in the background (megatron-core's async dist_checkpointing) while training
    # goes on; `latest` moves once every rank's part is on disk and verified. bench/bench_checkpoint.py.
    async_save: bool = False
    # Checking a checkpoint's files against their checksums before loading it: full (every byte) |
    # headers (sizes and the first MiB of each file: for checkpoints too large to read whole).
    verify: str = "full"
    # Model fields a resumed run may change on purpose (the weights were trained with the old
    # values), e.g. [clp_hidden_scale, swa_window]; model/config.py CHANGEABLE_FIELDS lists them.
    allow_model_change: List[str] = field(default_factory=list)
    # Let DeepSpeed load checkpoint files that hold pickled objects beyond its known data classes
    # (unpickling can run code): only for checkpoints you trust.
    allow_pickle: bool = False


@dataclass
class EvalConfig:
    interval: int = 50                   # steps between validation losses (0: never)
    # HumanEval solution likelihood (and optionally greedy pass@1) during training.
    code: EvalCodeConfig = field(default_factory=EvalCodeConfig)


@dataclass
class DiagnosticsConfig:
    # Steps between the per-loop diagnostics on the held-out batch (model/diagnostics.py; 0: never).
    # Computed with parallel.pp = 1 only (every loop's hidden states must be on one rank).
    interval: int = 50
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
    """Read only under engine=deepspeed (pretrain/engines/deepspeed.py)."""

    zero_stage: int = 1                  # 0 (plain DP) | 1 optimizer | 2 + gradients | 3 + weights
    offload_optimizer: str = "none"      # none | cpu (ZeRO-Offload: optimizer state and step on CPU)
    offload_param: str = "none"          # none | cpu (ZeRO-3 only: weights on CPU between uses)
    overlap_comm: bool = False           # overlap gradient reduction with the backward pass


@dataclass
class LaunchConfig:
    """`launch.*`: how `python -m launch.slurm submit` puts this run on a SLURM cluster. The trainer
    never reads it; it is typed here so that a typo in launch.* fails at start like any other key.
    The defaults are a GPU cluster's (conf/launch/slurm.yaml); conf/launch/cpu.yaml a CPU one's."""

    nodes: int = 1
    # Processes per node: one per GPU (accelerator=gpu), or that many CPU processes (accelerator=cpu).
    gpus_per_node: int = 8
    accelerator: str = "gpu"            # gpu (requests --gpus-per-node, NCCL) | cpu (gloo, no GRES)
    cpus_per_task: int = 0              # 0: leave it to the partition's default
    mem: str = ""                       # --mem per node, e.g. 0 (all) or 400G; "": cluster default
    partition: str = ""                 # "": the cluster's default partition
    account: str = ""
    qos: str = ""
    time: str = "04:00:00"              # per job; a longer run continues by requeue / follow-up jobs
    job_name: str = "loopcoder"
    exclusive: bool = True              # whole nodes: a training job shares neither GPUs nor NICs
    log_dir: str = "${run_dir}/slurm"   # sbatch scripts and one log per job (%x-%j.out, appended)
    # SLURM sends SIGUSR1 to the batch shell this many seconds before the time limit; the script
    # forwards it to every rank, which checkpoints and exits 75, and the script requeues the job.
    # SLURM's timer is coarse (it fires up to a minute late): leave room for a step plus a save.
    signal_grace_s: int = 300
    requeue: bool = True                # `scontrol requeue` when the trainer exits 75 (stopped early)
    # Follow-up jobs chained with --dependency=afterany: each resumes from `latest`, so a run outlives
    # a failed requeue or a crash. The job that reaches train.max_steps cancels the ones left.
    chain: int = 0
    python: str = ""                    # interpreter on the nodes; "": the one running `submit`
    # Shell lines run at the top of the job, e.g. ["module load cuda/12.4", "source .venv/bin/activate"].
    env_setup: List[str] = field(default_factory=list)
    # Extra `srun` flags for the training step, e.g. ["--container-image=nvcr.io#nvidia/pytorch:24.07-py3",
    # "--container-mounts=/data:/data"] (pyxis), and extra `#SBATCH` flags, e.g. ["--constraint=h100"].
    srun_args: List[str] = field(default_factory=list)
    sbatch_args: List[str] = field(default_factory=list)


@dataclass
class DebugConfig:
    """Fault injection for tests and for rehearsing a failure (pretrain/debug.py); empty in runs."""

    # Optimizer steps (1-based) whose training loss is made NaN, e.g. [3, 4]: the step is skipped,
    # and train.max_skipped_steps of them in a row stop the run.
    nan_loss_at_steps: List[int] = field(default_factory=list)


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
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)
    study: StudyConfig = field(default_factory=StudyConfig)  # read by study experiments only
    # Everything a run writes: config.yaml, metrics.jsonl, checkpoints/, wandb/, the Hydra log.
    # launch_time (not Hydra's now): the same folder for every process torchrun starts on a node.
    run_dir: str = "outputs/${launch_time:%Y-%m-%d_%H-%M-%S}"


def register() -> None:
    """Make the schema Hydra's `base_config` (conf/config.yaml's first default), and register its
    resolvers (pretrain/resolvers.py). Idempotent."""
    register_resolvers()
    ConfigStore.instance().store(name="base_config", node=Config)


CONF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")


def compose(overrides: List[str]):
    """The run config (a DictConfig over `Config`) for these Hydra overrides, composed from
    `conf/` exactly as `python -m pretrain.train` composes it: what the launcher, the planner
    and the dry run check before anything starts. A typo raises Hydra's error naming the key."""
    from hydra import compose as hydra_compose, initialize_config_dir

    register()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


def data_parallel_size(cfg: Config, world_size: int) -> int:
    return world_size // (cfg.parallel.tp * cfg.parallel.pp)


def validate(cfg: Config, world_size: int) -> None:
    """Refuse combinations no single field can catch (ConfigError naming the keys), and settle
    what depends on the world size: an unset train.micro_batch_size becomes the whole per-rank
    share of the global batch (split in parallel.pp micro-batches when the loops are the virtual
    pipeline chunks)."""
    t, p, m = cfg.train, cfg.parallel, cfg.model
    for key, value in [("train.max_steps", t.max_steps), ("train.global_batch_size", t.global_batch_size),
                       ("train.seq_length", t.seq_length), ("parallel.tp", p.tp), ("parallel.pp", p.pp)]:
        require(value >= 1, f"{key}={value}; it must be >= 1")
    require(world_size % (p.tp * p.pp) == 0,
            f"the world size {world_size} is not divisible by parallel.tp * parallel.pp = "
            f"{p.tp} * {p.pp}; launch a multiple of {p.tp * p.pp} processes or change parallel.tp/pp")
    dp = data_parallel_size(cfg, world_size)
    # The loops as virtual pipeline chunks (pp > 1, R > 1): megatron's interleaved schedule runs a
    # step's micro-batches in groups of parallel.pp, so a step needs a multiple of pp of them.
    group = p.pp if virtual_pipeline_size(m.num_loops, p.pp) else 1
    if t.micro_batch_size is None:
        require(t.global_batch_size % dp == 0,
                f"train.global_batch_size={t.global_batch_size} is not divisible by the "
                f"data-parallel size {dp} (world {world_size} / (tp {p.tp} * pp {p.pp})); pick a "
                f"global batch that is a multiple of {dp}")
        share = t.global_batch_size // dp
        t.micro_batch_size = share // group if share % group == 0 else share
    require(t.micro_batch_size >= 1, f"train.micro_batch_size={t.micro_batch_size}; it must be >= 1")
    require(t.global_batch_size % (t.micro_batch_size * dp) == 0,
            f"train.global_batch_size={t.global_batch_size} is not divisible by "
            f"train.micro_batch_size * data-parallel size = {t.micro_batch_size} * {dp} = "
            f"{t.micro_batch_size * dp}; pick a global batch that is a multiple of "
            f"{t.micro_batch_size * dp}")
    micro_batches = t.global_batch_size // (t.micro_batch_size * dp)
    require(micro_batches % group == 0,
            f"{micro_batches} micro-batch(es) per step (train.global_batch_size="
            f"{t.global_batch_size} / (train.micro_batch_size={t.micro_batch_size} * data-parallel "
            f"size {dp})), but with the loops as virtual pipeline chunks (parallel.pp={p.pp}, "
            f"model.num_loops={m.num_loops}) megatron's interleaved schedule needs a multiple of "
            f"parallel.pp={p.pp}; set train.micro_batch_size to give one, or leave it unset with a "
            f"global batch that is a multiple of {dp * group}")
    # The architecture against the layout: the checks the model runs when it is built.
    m.validate(p.tp, p.pp, p.vpp)
    require(not (p.pp > 1 and m.num_loops > 1 and p.overlap_grad_reduce),
            "parallel.overlap_grad_reduce=true with parallel.pp > 1 and model.num_loops > 1: every "
            "loop's chunk adds to the same shared weights, so a gradient bucket is complete only "
            "after the last loop's backward; set parallel.overlap_grad_reduce=false")
    require(not p.sequence_parallel or p.tp > 1,
            "parallel.sequence_parallel=true needs parallel.tp > 1")
    require(p.backend in ("auto", "nccl", "gloo"),
            f"parallel.backend={p.backend!r}; use auto, nccl or gloo")
    require(t.seq_length <= m.max_position_embeddings,
            f"train.seq_length={t.seq_length} exceeds model.max_position_embeddings="
            f"{m.max_position_embeddings}")
    require(t.precision in ("auto", "fp32", "bf16"),
            f"train.precision={t.precision!r}; use auto, fp32 or bf16")
    _validate_train_values(t)
    require(0 <= t.min_lr <= t.lr, f"train.min_lr={t.min_lr} must be in [0, train.lr={t.lr}]")
    require(t.warmup_steps >= 0, f"train.warmup_steps={t.warmup_steps}; it must be >= 0")
    decay = t.decay_steps if t.decay_steps is not None else t.max_steps
    decay_key = "train.decay_steps" if t.decay_steps is not None else "train.max_steps (the decay length)"
    require(decay > t.warmup_steps,
            f"{decay_key}={decay} must exceed train.warmup_steps={t.warmup_steps}; lower the warm-up")
    _validate_run_keys(cfg)
    if cfg.engine == "deepspeed":
        _validate_deepspeed(cfg)


def _validate_train_values(t: TrainConfig) -> None:
    """The optimizer's numbers: out of range they train NaN or nothing and still exit 0."""
    def finite(value) -> bool:
        return value is not None and math.isfinite(value)

    for key, value, ok, words in (
            ("lr", t.lr, finite(t.lr) and t.lr >= 0, "a finite number >= 0"),
            ("min_lr", t.min_lr, finite(t.min_lr), "a finite number in [0, train.lr]"),
            ("weight_decay", t.weight_decay, finite(t.weight_decay) and t.weight_decay >= 0,
             "a finite number >= 0"),
            ("adam_beta1", t.adam_beta1, finite(t.adam_beta1) and 0 <= t.adam_beta1 < 1,
             "a number in [0, 1)"),
            ("adam_beta2", t.adam_beta2, finite(t.adam_beta2) and 0 <= t.adam_beta2 < 1,
             "a number in [0, 1)"),
            ("adam_eps", t.adam_eps, finite(t.adam_eps) and t.adam_eps > 0, "a finite number > 0"),
            ("clip_grad", t.clip_grad, finite(t.clip_grad) and t.clip_grad >= 0,
             "a finite number >= 0 (0: no clipping)"),
            ("peak_tflops", t.peak_tflops, t.peak_tflops is None or (
                finite(t.peak_tflops) and t.peak_tflops > 0), "a finite number > 0 (or null)"),
            ("max_skipped_steps", t.max_skipped_steps, t.max_skipped_steps >= 0, "an integer >= 0"),
            ("seed", t.seed, 0 <= t.seed < 2**32, "an integer in [0, 2^32)")):
        require(ok, f"train.{key}={value!r} is out of range: it must be {words}")


def _validate_run_keys(cfg: Config) -> None:
    require(cfg.checkpoint.keep >= 0, f"checkpoint.keep={cfg.checkpoint.keep}; it must be >= 0")
    require(cfg.checkpoint.interval >= 0, f"checkpoint.interval={cfg.checkpoint.interval}; use >= 0")
    resume = cfg.checkpoint.resume
    require(resume in ("auto", "none") or os.path.isdir(resume),
            f"checkpoint.resume={resume!r} is neither auto, none nor an existing checkpoint folder")
    init_from = cfg.checkpoint.init_from
    require(init_from is None or os.path.isdir(init_from),
            f"checkpoint.init_from={init_from!r} is not a folder; give a Hugging Face directory or a "
            f"loopcoder checkpoint (an iter_ folder or a checkpoint dir with a `latest` file)")
    require(cfg.checkpoint.verify in ("full", "headers"),
            f"checkpoint.verify={cfg.checkpoint.verify!r}; use full or headers")
    for key in cfg.checkpoint.allow_model_change:
        require(key in CHANGEABLE_FIELDS,
                f"checkpoint.allow_model_change lists {key!r}, which "
                + ("decides which weights exist or their shapes: it cannot change on resume"
                   if key in STRUCTURAL_FIELDS else "is not a model field that changes the function")
                + f"; the changeable fields are {', '.join(CHANGEABLE_FIELDS)}")
    require(cfg.eval.interval >= 0, f"eval.interval={cfg.eval.interval}; it must be >= 0")
    validate_code_config(cfg.eval.code)
    cfg.data.validate()
    require(cfg.logging.interval >= 1, f"logging.interval={cfg.logging.interval}; it must be >= 1")
    d, sample = cfg.diagnostics, cfg.sample
    require(d.interval >= 0, f"diagnostics.interval={d.interval}; it must be >= 0 (0: never)")
    require(d.attention_queries >= 0,
            f"diagnostics.attention_queries={d.attention_queries}; it must be >= 0 (0: skip them)")
    require(sample.max_new_tokens >= 0,
            f"sample.max_new_tokens={sample.max_new_tokens}; it must be >= 0 (0: no sample)")
    require(math.isfinite(sample.temperature) and sample.temperature >= 0,
            f"sample.temperature={sample.temperature}; it must be a finite number >= 0 (0: greedy)")
    require(math.isfinite(sample.top_p) and 0 < sample.top_p <= 1,
            f"sample.top_p={sample.top_p}; it must be in (0, 1]")
    require(cfg.logging.wandb.mode in ("offline", "online", "disabled"),
            f"logging.wandb.mode={cfg.logging.wandb.mode!r}; use offline, online or disabled")
    require(cfg.engine in ("megatron", "deepspeed"),
            f"engine={cfg.engine!r}; use megatron or deepspeed")


def _validate_deepspeed(cfg: Config) -> None:
    """What the DeepSpeed engine cannot do (pretrain/engines/deepspeed.py), named with the fix."""
    p, d = cfg.parallel, cfg.deepspeed
    require(p.tp == 1 and p.pp == 1,
            f"engine=deepspeed runs data parallel only (ZeRO), but parallel.tp={p.tp} "
            f"parallel.pp={p.pp}; use parallel.tp=1 parallel.pp=1, or engine=megatron for TP/PP")
    require(p.vpp is None, f"parallel.vpp={p.vpp} needs pipeline parallelism; engine=deepspeed has "
                           f"none: use parallel.vpp=null or engine=megatron")
    require(not p.sequence_parallel, "parallel.sequence_parallel=true needs tensor parallelism; "
                                     "engine=deepspeed has none: use engine=megatron")
    require(not p.distributed_optimizer,
            "parallel.distributed_optimizer=true is megatron's ZeRO-1; with engine=deepspeed use "
            "deepspeed.zero_stage=1 (or 2, 3) and parallel.distributed_optimizer=false")
    require(not p.overlap_grad_reduce,
            "parallel.overlap_grad_reduce=true is a megatron DDP option; with engine=deepspeed leave "
            "it false (DeepSpeed's deepspeed.overlap_comm does the same)")
    require(d.zero_stage in (0, 1, 2, 3), f"deepspeed.zero_stage={d.zero_stage}; use 0, 1, 2 or 3")
    require(d.offload_optimizer in ("none", "cpu"),
            f"deepspeed.offload_optimizer={d.offload_optimizer!r}; use none or cpu")
    require(d.offload_param in ("none", "cpu"),
            f"deepspeed.offload_param={d.offload_param!r}; use none or cpu")
    require(d.offload_optimizer == "none" or d.zero_stage >= 1,
            f"deepspeed.offload_optimizer=cpu needs deepspeed.zero_stage >= 1 (it is {d.zero_stage})")
    require(d.offload_param == "none" or d.zero_stage == 3,
            f"deepspeed.offload_param=cpu needs deepspeed.zero_stage=3 (it is {d.zero_stage})")
    require(importlib.util.find_spec("deepspeed") is not None, DEEPSPEED_INSTALL_HINT)
