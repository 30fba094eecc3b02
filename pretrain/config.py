"""The one schema of a run: dataclasses registered with Hydra's ConfigStore, filled by `conf/`.

Hydra merges the YAML of `conf/config.yaml` (and its groups) onto `Config`, so an unknown key or a
value of the wrong type fails at start with the key's full name (`train.max_stepz`,
`train.seq_length=abc`). What a value cannot say by its type, each node checks in its own
`validate()` method; `validate(cfg, world_size)` runs them, derives the parallel layout
(pretrain/layout.py: the world-size rules) and checks the rules between nodes
(pretrain/config_rules.py), before anything is built. Every message names the keys and the fix.

Each default is stated here and only here; the YAML files in `conf/` state what a preset changes.
Nodes: `model` (model/config.py: ModelConfig), `data` (data/config.py: DataConfig), `train`,
`parallel`, `checkpoint`, `eval`, `diagnostics`, `logging`, `sample`, `deepspeed`, `launch`,
`debug`, `study` (pretrain/study.py), plus `run_dir` and `engine`. Key names are a contract (docs/architecture.md#contracts): renaming
one breaks tools and tests.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import List, Optional

from hydra.core.config_store import ConfigStore

from data.config import DataConfig
from model.config import (CHANGEABLE_FIELDS, STRUCTURAL_FIELDS, ConfigError, ModelConfig,
                          require)
from pretrain.config_rules import check_between_nodes
from pretrain.layout import ParallelLayout, settle_micro_batch
from pretrain.eval_code import EvalCodeConfig, validate_code_config
from pretrain.resolvers import launch_time, register_resolvers  # noqa: F401  (launch_time: API)
from pretrain.study import StudyConfig

__all__ = ["Config", "ConfigError", "LaunchConfig", "ParallelLayout", "compose", "validate",
           "register"]

@dataclass
class TrainConfig:
    max_steps: int = 300
    global_batch_size: int = 8          # samples per optimizer step, all ranks together
    # Samples per forward/backward on one rank; the rest of a rank's share of the global batch is
    # gradient accumulation. None: the whole share (global batch / data-parallel size), settled by
    # validate() for the world size (pretrain/layout.py settle_micro_batch).
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

    def validate(self) -> None:
        for key in ("max_steps", "global_batch_size", "seq_length"):
            require(getattr(self, key) >= 1, f"train.{key}={getattr(self, key)}; it must be >= 1")
        require(self.micro_batch_size is None or self.micro_batch_size >= 1,
                f"train.micro_batch_size={self.micro_batch_size}; it must be >= 1")
        require(self.precision in ("auto", "fp32", "bf16"),
                f"train.precision={self.precision!r}; use auto, fp32 or bf16")
        self._check_optimizer_values()
        require(0 <= self.min_lr <= self.lr,
                f"train.min_lr={self.min_lr} must be in [0, train.lr={self.lr}]")
        require(self.warmup_steps >= 0, f"train.warmup_steps={self.warmup_steps}; it must be >= 0")
        decay = self.decay_steps if self.decay_steps is not None else self.max_steps
        decay_key = ("train.decay_steps" if self.decay_steps is not None
                     else "train.max_steps (the decay length)")
        require(decay > self.warmup_steps, f"{decay_key}={decay} must exceed train.warmup_steps="
                                           f"{self.warmup_steps}; lower the warm-up")

    def _check_optimizer_values(self) -> None:
        """The optimizer's numbers: out of range they train NaN or nothing and still exit 0."""
        def finite(value) -> bool:
            return value is not None and math.isfinite(value)

        for key, value, ok, words in (
                ("lr", self.lr, finite(self.lr) and self.lr >= 0, "a finite number >= 0"),
                ("min_lr", self.min_lr, finite(self.min_lr), "a finite number in [0, train.lr]"),
                ("weight_decay", self.weight_decay,
                 finite(self.weight_decay) and self.weight_decay >= 0,
                 "a finite number >= 0"),
                ("adam_beta1", self.adam_beta1,
                 finite(self.adam_beta1) and 0 <= self.adam_beta1 < 1,
                 "a number in [0, 1)"),
                ("adam_beta2", self.adam_beta2,
                 finite(self.adam_beta2) and 0 <= self.adam_beta2 < 1,
                 "a number in [0, 1)"),
                ("adam_eps", self.adam_eps, finite(self.adam_eps) and self.adam_eps > 0,
                 "a finite number > 0"),
                ("clip_grad", self.clip_grad, finite(self.clip_grad) and self.clip_grad >= 0,
                 "a finite number >= 0 (0: no clipping)"),
                ("peak_tflops", self.peak_tflops, self.peak_tflops is None or (
                    finite(self.peak_tflops) and self.peak_tflops > 0),
                 "a finite number > 0 (or null)"),
                ("max_skipped_steps", self.max_skipped_steps, self.max_skipped_steps >= 0,
                 "an integer >= 0"),
                ("seed", self.seed, 0 <= self.seed < 2**32, "an integer in [0, 2^32)")):
            require(ok, f"train.{key}={value!r} is out of range: it must be {words}")


@dataclass
class ParallelConfig:
    tp: int = 1                          # tensor parallel size
    pp: int = 1                          # pipeline parallel size
    vpp: Optional[int] = None            # virtual pipeline stages per rank (PLT: null or num_loops)
    sequence_parallel: bool = False      # needs tp > 1
    distributed_optimizer: bool = False  # shard optimizer state over data-parallel ranks (ZeRO-1)
    overlap_grad_reduce: bool = False
    backend: str = "auto"                # auto (nccl on GPU, gloo on CPU) | nccl | gloo

    def validate(self) -> None:
        for key in ("tp", "pp"):
            require(getattr(self, key) >= 1, f"parallel.{key}={getattr(self, key)}; it must be >= 1")
        require(not self.sequence_parallel or self.tp > 1,
                "parallel.sequence_parallel=true needs parallel.tp > 1")
        require(self.backend in ("auto", "nccl", "gloo"),
                f"parallel.backend={self.backend!r}; use auto, nccl or gloo")


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

    def validate(self) -> None:
        require(self.keep >= 0, f"checkpoint.keep={self.keep}; it must be >= 0")
        require(self.interval >= 0, f"checkpoint.interval={self.interval}; use >= 0")
        require(self.resume in ("auto", "none") or os.path.isdir(self.resume),
                f"checkpoint.resume={self.resume!r} is neither auto, none nor an existing "
                f"checkpoint folder")
        require(self.init_from is None or os.path.isdir(self.init_from),
                f"checkpoint.init_from={self.init_from!r} is not a folder; give a Hugging Face "
                f"directory or a loopcoder checkpoint (an iter_ folder or a checkpoint dir with a "
                f"`latest` file)")
        require(self.verify in ("full", "headers"),
                f"checkpoint.verify={self.verify!r}; use full or headers")
        for key in self.allow_model_change:
            require(key in CHANGEABLE_FIELDS,
                    f"checkpoint.allow_model_change lists {key!r}, which "
                    + ("decides which weights exist or their shapes: it cannot change on resume"
                       if key in STRUCTURAL_FIELDS else "is not a model field that changes the "
                                                        "function")
                    + f"; the changeable fields are {', '.join(CHANGEABLE_FIELDS)}")


@dataclass
class EvalConfig:
    interval: int = 50                   # steps between validation losses (0: never)
    # Global batches of the validation split the loss averages over (Megatron's --eval-iters):
    # batches 0..batches-1, the same ones at every evaluation and after a resume.
    batches: int = 1
    # HumanEval solution likelihood (and optionally greedy pass@1) during training.
    code: EvalCodeConfig = field(default_factory=EvalCodeConfig)

    def validate(self) -> None:
        require(self.interval >= 0, f"eval.interval={self.interval}; it must be >= 0")
        require(self.batches >= 1,  # an integer: the typed config refuses anything else
                f"eval.batches={self.batches!r}; it is the number of validation batches the loss "
                f"averages over, an integer >= 1")
        validate_code_config(self.code)


@dataclass
class DiagnosticsConfig:
    # Steps between the per-loop diagnostics on the held-out batch (model/diagnostics.py; 0: never).
    # Computed with parallel.pp = 1 only (every loop's hidden states must be on one rank).
    interval: int = 50
    attention_queries: int = 64          # query positions for the attention metrics (0: skip them)

    def validate(self) -> None:
        require(self.interval >= 0,
                f"diagnostics.interval={self.interval}; it must be >= 0 (0: never)")
        require(self.attention_queries >= 0, f"diagnostics.attention_queries="
                                             f"{self.attention_queries}; it must be >= 0 (0: skip them)")


@dataclass
class WandbConfig:
    mode: str = "offline"                # offline (files under run_dir/wandb) | online | disabled
    project: str = "loopcoder"
    entity: Optional[str] = None
    name: Optional[str] = None           # None: the run folder's name

    def validate(self) -> None:
        require(self.mode in ("offline", "online", "disabled"),
                f"logging.wandb.mode={self.mode!r}; use offline, online or disabled")


@dataclass
class LoggingConfig:
    interval: int = 10                   # steps between console lines / metrics.jsonl rows
    wandb: WandbConfig = field(default_factory=WandbConfig)

    def validate(self) -> None:
        require(self.interval >= 1, f"logging.interval={self.interval}; it must be >= 1")
        self.wandb.validate()


@dataclass
class SampleConfig:
    """The code sample printed at the end of the run (model/generation.py: sample)."""

    prompt: str = "def fibonacci(n):\n"
    max_new_tokens: int = 64             # 0: no sample
    temperature: float = 0.0             # 0: greedy
    top_p: float = 1.0

    def validate(self) -> None:
        require(self.max_new_tokens >= 0,
                f"sample.max_new_tokens={self.max_new_tokens}; it must be >= 0 (0: no sample)")
        require(math.isfinite(self.temperature) and self.temperature >= 0,
                f"sample.temperature={self.temperature}; it must be a finite number >= 0 "
                f"(0: greedy)")
        require(math.isfinite(self.top_p) and 0 < self.top_p <= 1,
                f"sample.top_p={self.top_p}; it must be in (0, 1]")


@dataclass
class DeepSpeedConfig:
    """Read only under engine=deepspeed (pretrain/engines/deepspeed.py)."""

    zero_stage: int = 1                  # 0 (plain DP) | 1 optimizer | 2 + gradients | 3 + weights
    offload_optimizer: str = "none"      # none | cpu (ZeRO-Offload: optimizer state and step on CPU)
    offload_param: str = "none"          # none | cpu (ZeRO-3 only: weights on CPU between uses)
    overlap_comm: bool = False           # overlap gradient reduction with the backward pass

    def validate(self) -> None:
        """Checked under engine=deepspeed only (the node is not read otherwise)."""
        require(self.zero_stage in (0, 1, 2, 3),
                f"deepspeed.zero_stage={self.zero_stage}; use 0, 1, 2 or 3")
        for key in ("offload_optimizer", "offload_param"):
            require(getattr(self, key) in ("none", "cpu"),
                    f"deepspeed.{key}={getattr(self, key)!r}; use none or cpu")
        require(self.offload_optimizer == "none" or self.zero_stage >= 1,
                f"deepspeed.offload_optimizer=cpu needs deepspeed.zero_stage >= 1 (it is "
                f"{self.zero_stage})")
        require(self.offload_param == "none" or self.zero_stage == 3,
                f"deepspeed.offload_param=cpu needs deepspeed.zero_stage=3 (it is "
                f"{self.zero_stage})")


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

    def validate(self) -> None:
        """Each node's own checks. The model's and the data's run in check_between_nodes: the
        architecture is checked against tp and pp, the data against what the run reads."""
        for node in (self.train, self.parallel, self.checkpoint, self.eval, self.logging,
                     self.diagnostics, self.sample):
            node.validate()


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


def validate(cfg: Config, world_size: int) -> ParallelLayout:
    """Everything checkable before anything is built, for `world_size` processes: each node's own
    rules (Config.validate), the parallel layout (pretrain/layout.py: the world-size rules; an
    unset train.micro_batch_size is settled, i.e. WRITTEN into cfg), then the rules between
    nodes for the features in use (pretrain/config_rules.py). Raises ConfigError (or the data
    node's DataConfigError) naming the keys and the fix; returns the layout."""
    cfg.validate()
    layout = settle_micro_batch(cfg, world_size)
    check_between_nodes(cfg, layout)
    return layout
