"""The ``eval.code`` node: code evaluation during training, its settings and when it is due.

    if due(cfg.eval.code.interval, step, last_step):               # pretrain/trainer.py
        row.update(evaluate_code(model, tokenizer, cfg.eval.code))  # evaluation/during_training.py

pretrain/config.py nests EvalCodeConfig under ``eval.code``. The evaluation itself (HumanEval
solution likelihood, greedy pass@1 in the sandbox) is evaluation/'s, which sits above pretrain/
(docs/architecture.md#floors): the entry, pretrain/train.py, hands the trainer its
``evaluate_code``; nothing in the trainer imports evaluation/. When it is due follows the one
rule of pretrain/intervals.py, with the whole model on each rank (pretrain/layout.py).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EvalCodeConfig:
    interval: int = 0                # steps between code evaluations (0: off)
    problems: int = 32               # the first N HumanEval problems: the same subset each time
    batch_size: int = 8              # sequences per forward (solution NLL) and per decode batch
    # Greedy pass@1 on the same subset: generation, then the sandboxed tests (rank 0 only). It
    # stays 0 on small models; the NLL is the signal there.
    greedy_pass_at_1: bool = False
    max_new_tokens: int = 256        # for greedy_pass_at_1
    workers: int = 2                 # sandboxes running at once, for greedy_pass_at_1
    timeout_s: float = 10.0          # wall clock per sample, for greedy_pass_at_1


def validate_code_config(cfg: EvalCodeConfig) -> None:
    """Refuse bad values at start, naming the key (pretrain/config.py validate() calls it)."""
    from model.config import ConfigError

    checks = [("interval", cfg.interval >= 0, ">= 0 (0: off)"),
              ("problems", 1 <= cfg.problems <= 164, "in 1..164 (HumanEval has 164)"),
              ("batch_size", cfg.batch_size >= 1, ">= 1"),
              ("max_new_tokens", cfg.max_new_tokens >= 1, ">= 1"),
              ("workers", cfg.workers >= 1, ">= 1"),
              ("timeout_s", cfg.timeout_s > 0, "> 0")]
    for key, ok, rule in checks:
        if not ok:
            raise ConfigError(f"eval.code.{key}={getattr(cfg, key)}; it must be {rule}")

