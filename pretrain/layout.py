"""The parallel layout of a run, derived once from the config and the world size.

    layout = ParallelLayout.from_config(cfg, world_size)   # ConfigError naming the keys
    layout.tp, layout.pp, layout.vpp, layout.dp, layout.micro_batch_size, layout.num_micro_batches
    layout = settle_micro_batch(cfg, world_size)           # the same, and writes the micro batch

Everything that splits the model or the batch reads it: the process groups
(pretrain/distributed.py), the model config (its virtual pipeline size), the engines, the planner
(planning/memory.py) and the startup log line. An impossible world size is refused here, once.

The virtual pipeline size is PLT's: the loops are megatron's virtual pipeline chunks
(model/pipeline.py), so vpp = num_loops whenever pp > 1 and num_loops > 1, else none; the user's
parallel.vpp may only say the same (model/config.py ModelConfig.validate refuses another value).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from model.config import require
from model.pipeline import virtual_pipeline_size


@dataclass(frozen=True)
class ParallelLayout:
    world_size: int
    tp: int                     # tensor parallel size
    pp: int                     # pipeline stages
    vpp: Optional[int]          # virtual pipeline chunks per stage (the loops), None without
    dp: int                     # data-parallel replicas: world_size / (tp * pp)
    micro_batch_size: int       # samples per forward/backward on one rank
    num_micro_batches: int      # micro-batches per rank per optimizer step
    sequence_parallel: bool = False

    @property
    def whole_model_on_each_rank(self) -> bool:
        """Whether a rank holds every layer of the model (pp = 1). What needs a whole forward on
        one rank runs only then: the loop diagnostics (every loop's hidden states), the code
        evaluation (scoring and greedy decoding) and the end-of-run sample (decoding): a pipeline
        stage holds only its own layers (model/pipeline.py holds_whole_model: the built model's
        side of the same rule). A checkpoint can be evaluated with pp = 1 instead."""
        return self.pp == 1

    def describe(self) -> str:
        """One line for the startup log."""
        return (f"tp={self.tp} pp={self.pp} vpp={self.vpp or 1} dp={self.dp}"
                f"{' sp' if self.sequence_parallel else ''}, {self.num_micro_batches} "
                f"micro-batch(es) of {self.micro_batch_size} per rank per step")

    @classmethod
    def from_config(cls, cfg, world_size: int) -> "ParallelLayout":
        """The layout of `cfg` (parallel.*, train.*, model.num_loops) on `world_size` processes,
        with an unset train.micro_batch_size taken as its settled value (`settle_micro_batch`)
        without writing it. Each node's own checks come first (pretrain/config.py validate);
        this raises ConfigError for a world or a batch the layout cannot split."""
        train, parallel = cfg.train, cfg.parallel
        require(world_size % (parallel.tp * parallel.pp) == 0,
                f"the world size {world_size} is not divisible by parallel.tp * parallel.pp = "
                f"{parallel.tp} * {parallel.pp}; launch a multiple of {parallel.tp * parallel.pp} "
                f"processes or change parallel.tp/pp")
        dp = world_size // (parallel.tp * parallel.pp)
        vpp = virtual_pipeline_size(cfg.model.num_loops, parallel.pp)
        # megatron's interleaved schedule (the loops as virtual chunks) runs a step's
        # micro-batches in groups of pp, so a step needs a multiple of pp of them.
        group = parallel.pp if vpp else 1
        micro_batch_size = train.micro_batch_size
        if micro_batch_size is None:
            require(train.global_batch_size % dp == 0,
                    f"train.global_batch_size={train.global_batch_size} is not divisible by the "
                    f"data-parallel size {dp} (world {world_size} / (tp {parallel.tp} * pp "
                    f"{parallel.pp})); pick "
                    f"a global batch that is a multiple of {dp}")
            share = train.global_batch_size // dp
            micro_batch_size = share // group if share % group == 0 else share
        require(train.global_batch_size % (micro_batch_size * dp) == 0,
                f"train.global_batch_size={train.global_batch_size} is not divisible by "
                f"train.micro_batch_size * data-parallel size = {micro_batch_size} * {dp} = "
                f"{micro_batch_size * dp}; pick a global batch that is a multiple of "
                f"{micro_batch_size * dp}")
        micro_batches = train.global_batch_size // (micro_batch_size * dp)
        require(micro_batches % group == 0,
                f"{micro_batches} micro-batch(es) per step (train.global_batch_size="
                f"{train.global_batch_size} / (train.micro_batch_size={micro_batch_size} * "
                f"data-parallel size {dp})), but with the loops as virtual pipeline chunks "
                f"(parallel.pp={parallel.pp}, model.num_loops={cfg.model.num_loops}) megatron's "
                f"interleaved schedule needs a multiple of parallel.pp={parallel.pp}; set "
                f"train.micro_batch_size to give one, or leave it unset with a global batch that "
                f"is a multiple of {dp * group}")
        return cls(world_size=world_size, tp=parallel.tp, pp=parallel.pp, vpp=vpp, dp=dp,
                   micro_batch_size=micro_batch_size, num_micro_batches=micro_batches,
                   sequence_parallel=parallel.sequence_parallel)


def settle_micro_batch(cfg, world_size: int) -> ParallelLayout:
    """Derive the layout and WRITE an unset train.micro_batch_size into `cfg`: the whole per-rank
    share of the global batch (split in parallel.pp micro-batches when the loops are the virtual
    pipeline chunks), so that any data-parallel size that divides the global batch just works.
    The trainer's config.yaml records the settled value; the planner prices the same."""
    layout = ParallelLayout.from_config(cfg, world_size)
    cfg.train.micro_batch_size = layout.micro_batch_size
    return layout
