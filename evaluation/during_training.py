"""Code evaluation during training: the one call the trainer makes every eval.code.interval steps
(its settings and its schedule: pretrain/eval_code.py; the entry, pretrain/train.py, hands this
function to the trainer).

    row = evaluate_code(model, tokenizer, cfg.eval.code, step)   # {"step", "humaneval_nll", ...}
"""

from __future__ import annotations

from typing import Dict, Optional

from evaluation.nll import solution_nll
from evaluation.problems import load_problems
from pretrain.eval_code import EvalCodeConfig


def evaluate_code(model, tokenizer, cfg: EvalCodeConfig, step: Optional[int] = None,
                  rank: int = 0) -> Dict[str, float]:
    """The metrics row: humaneval_nll, humaneval_bits, humaneval_tokens (and humaneval_pass@1 with
    greedy_pass_at_1, on rank 0). Call it on every rank of the model-parallel group: the forward
    and the decoding are collective under tensor parallelism."""
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
