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
    """The held-out batches (global batches 0..eval.batches-1 of the validation split,
    pretrain/trainer.py) are read by the validation loss (eval.interval > 0), and the first
    micro-batch of batch 0 by the loop diagnostics (diagnostics.interval > 0, which run only with
    the whole model on each rank). Nothing else reads the validation split: the code evaluation
    reads HumanEval."""
    return cfg.eval.interval > 0 or (cfg.diagnostics.interval > 0
                                     and layout.whole_model_on_each_rank)


def check_between_nodes(cfg, layout) -> None:
    parallel, model = cfg.parallel, cfg.model
    # The architecture against the layout: the checks the model runs when it is built.
    model.validate(layout.tp, layout.pp, parallel.vpp)
    require(not (layout.vpp and parallel.overlap_grad_reduce),
            "parallel.overlap_grad_reduce=true with parallel.pp > 1 and model.num_loops > 1: every "
            "loop's chunk adds to the same shared weights, so a gradient bucket is complete only "
            "after the last loop's backward; set parallel.overlap_grad_reduce=false")
    require(cfg.train.seq_length <= model.max_position_embeddings,
            f"train.seq_length={cfg.train.seq_length} exceeds model.max_position_embeddings="
            f"{model.max_position_embeddings}")
    cfg.data.validate(reads_valid_blend=reads_held_out_batch(cfg, layout))
    # The engine's own refusals (the engine table, pretrain/engines/__init__.py): its node and
    # what it cannot run of the parallel node. Imported here: the table loads the engines.
    from pretrain.engines import check_engine_config

    check_engine_config(cfg)
