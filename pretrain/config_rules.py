"""The rules between config nodes: what no node can check alone, for the features a run uses.

    check_between_nodes(cfg, layout)     # ConfigError / DataConfigError naming the keys and the fix
    reads_held_out_batch(cfg, layout)    # whether the run reads the validation split at all

pretrain/config.py validate() calls it after each node's own checks and the layout
(pretrain/layout.py: the world-size rules). A rule here names every key it involves, and is
demanded only when the feature it protects is on (a validation blend only when something reads
the held-out batch).
"""

from __future__ import annotations

from model.config import require


def reads_held_out_batch(cfg, layout) -> bool:
    """The held-out batch (global batch 0 of the validation split, pretrain/train.py) is read by
    the validation loss (eval.interval > 0) and by the loop diagnostics (diagnostics.interval > 0,
    which run only with the whole model on each rank). Nothing else reads the validation split:
    the code evaluation reads HumanEval."""
    return cfg.eval.interval > 0 or (cfg.diagnostics.interval > 0
                                     and layout.whole_model_on_each_rank)


def check_between_nodes(cfg, layout) -> None:
    p, m = cfg.parallel, cfg.model
    # The architecture against the layout: the checks the model runs when it is built.
    m.validate(layout.tp, layout.pp, p.vpp)
    require(not (layout.vpp and p.overlap_grad_reduce),
            "parallel.overlap_grad_reduce=true with parallel.pp > 1 and model.num_loops > 1: every "
            "loop's chunk adds to the same shared weights, so a gradient bucket is complete only "
            "after the last loop's backward; set parallel.overlap_grad_reduce=false")
    require(cfg.train.seq_length <= m.max_position_embeddings,
            f"train.seq_length={cfg.train.seq_length} exceeds model.max_position_embeddings="
            f"{m.max_position_embeddings}")
    cfg.data.validate(reads_valid_blend=reads_held_out_batch(cfg, layout))
    if cfg.engine == "deepspeed":
        _check_deepspeed_layout(p)


def _check_deepspeed_layout(p) -> None:
    """What the DeepSpeed engine cannot do (pretrain/engines/deepspeed.py), named with the fix."""
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
