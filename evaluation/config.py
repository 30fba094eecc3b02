"""Code evaluation during training: the ``eval.code`` node and the one call the trainer makes.

    row = evaluate_code(model, tokenizer, cfg.eval.code, step)   # every eval.code.interval steps
    metrics.log(row)                                             # {"step", "humaneval_nll", ...}

Nothing here imports the trainer: pretrain/config.py nests EvalCodeConfig under ``eval.code`` and
pretrain/trainer.py calls ``evaluate_code`` when it is due (pretrain/intervals.py, with the whole
model on a rank: parallel.pp=1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional


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


def evaluate_code(model, tokenizer, cfg: EvalCodeConfig, step: Optional[int] = None,
                  rank: int = 0) -> Dict[str, float]:
    """The metrics row: humaneval_nll, humaneval_bits, humaneval_tokens (and humaneval_pass@1 with
    greedy_pass_at_1, on rank 0). Call it on every rank of the model-parallel group: the forward
    and the decoding are collective under tensor parallelism."""
    from evaluation.nll import solution_nll
    from evaluation.problems import load_problems

    problems = load_problems(cfg.problems)
    row: Dict[str, float] = {} if step is None else {"step": step}
    row.update(solution_nll(model, tokenizer, problems, cfg.batch_size))
    if cfg.greedy_pass_at_1:
        from evaluation.executor import execute
        from evaluation.generation import generate_completions
        from evaluation.sandbox import Limits, Sandbox

        completions = generate_completions(model, tokenizer, problems, samples_per_task=1,
                                           max_new_tokens=cfg.max_new_tokens,
                                           batch_size=cfg.batch_size, progress=False)
        if rank == 0:
            sandbox = Sandbox(Limits(timeout_s=cfg.timeout_s))
            outcomes = execute([(p, c.completion) for p, c in zip(problems, completions)],
                               sandbox, cfg.workers, progress=False)
            row["humaneval_pass@1"] = sum(o.passed for o in outcomes) / len(outcomes)
    return row
