"""How likely a model finds HumanEval's canonical solutions given their prompts.

    solution_nll(model, tokenizer, problems)
        -> {"humaneval_nll": mean nats per solution token, "humaneval_bits": total bits of all
            solutions, "humaneval_tokens": solution tokens scored}

One full forward pass per batch (no decoding), with labels: the model returns megatron's per-token
loss [b, s] (vocab-parallel cross entropy, so this is also right under tensor parallelism, where
every rank of the group must call it). Pass@1 stays at 0 while a model is small; this moves
smoothly with scale and training, so it ranks loop counts on a CPU-sized model. Prompt and
solution are encoded separately and joined, as generation sees them (a prompt, then new tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Sequence

import torch

from evaluation.problems import Problem
from model.pipeline import holds_whole_model
from model.unwrap import unwrap


@dataclass(frozen=True)
class SolutionScore:
    task_id: str
    tokens: int        # solution tokens scored
    nats: float        # their summed negative log-likelihood

    @property
    def bits(self) -> float:
        return self.nats / math.log(2)


def _window(tokenizer, problem: Problem, limit: int):
    """(tokens, index of the first solution token) within the model's ``limit`` positions: a long
    prompt loses its start; the solution stays whole whenever it fits."""
    prompt = tokenizer.encode(problem.prompt)
    solution = tokenizer.encode(problem.canonical_solution)
    tokens = (prompt + solution)[-limit:]
    return tokens, max(1, len(tokens) - len(solution))  # position 0 has no context to predict it


@torch.no_grad()
def score_solutions(model, tokenizer, problems: Sequence[Problem],
                    batch_size: int = 8) -> List[SolutionScore]:
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; it must be >= 1")
    model = unwrap(model)
    if not holds_whole_model(model.config):
        raise ValueError("solution_nll needs the whole model on each rank: run it with "
                         "parallel.pp=1 (as the loop diagnostics)")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    limit = model.config.max_position_embeddings
    scores = []
    for start in range(0, len(problems), batch_size):
        batch = problems[start:start + batch_size]
        windows = [_window(tokenizer, problem, limit) for problem in batch]
        length = max(len(tokens) for tokens, _ in windows)
        # Right padding: the model is causal, so padding never reaches a scored position.
        inputs = torch.full((len(batch), length), tokenizer.pad_id, dtype=torch.long)
        labels = torch.full_like(inputs, tokenizer.pad_id)
        scored = torch.zeros(len(batch), length, dtype=torch.bool)
        for row, (tokens, first) in enumerate(windows):
            inputs[row, :len(tokens)] = torch.tensor(tokens)
            labels[row, :len(tokens) - 1] = torch.tensor(tokens[1:])
            scored[row, first - 1:len(tokens) - 1] = True  # position i predicts token i + 1
        losses = model(inputs.to(device), labels=labels.to(device)).float().cpu()  # [b, s]
        for problem, row_losses, row_scored in zip(batch, losses, scored):
            scores.append(SolutionScore(problem.task_id, int(row_scored.sum()),
                                        float(row_losses[row_scored].double().sum())))
    model.train(was_training)
    return scores


def summarize(scores: Sequence[SolutionScore]) -> Dict[str, float]:
    tokens = sum(score.tokens for score in scores)
    nats = sum(score.nats for score in scores)
    return {"humaneval_nll": nats / tokens, "humaneval_bits": nats / math.log(2),
            "humaneval_tokens": tokens}


def solution_nll(model, tokenizer, problems: Sequence[Problem],
                 batch_size: int = 8) -> Dict[str, float]:
    """The trainer's call (eval.code): the summary over ``problems``."""
    return summarize(score_solutions(model, tokenizer, problems, batch_size))
