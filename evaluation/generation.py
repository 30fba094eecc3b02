"""HumanEval completions from a PLT model: the project's cached decoding (model/generation.py,
all loops of a token in one forward), in batches, cut where HumanEval cuts.

    completions = generate_completions(model, tokenizer, problems, samples_per_task=10,
                                       temperature=0.8, top_p=0.95, max_new_tokens=512)

A completion is what follows the prompt, up to the first of HumanEval's stop sequences (the Codex
paper, section 2.3: a new top-level class, def, comment, if or print ends the function body) or
the end-of-document token. Prompts are encoded as they are, without BOS: training documents carry
none (scripts/generate.py does the same).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
from tqdm import tqdm

from evaluation.problems import Problem
from model.generation import check_positions, generate

STOP_SEQUENCES = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
# Tokens of the newest text searched for a stop sequence at each step. A stop sequence is at most
# 6 ASCII characters and a token decodes to at least one (ASCII never falls back to bytes), so a
# sequence completed by the newest token lies within this tail; 16 leaves a margin.
STOP_TAIL_TOKENS = 16


@dataclass(frozen=True)
class Completion:
    task_id: str
    sample: int            # 0 .. samples_per_task - 1
    completion: str        # cut at the first stop sequence
    new_tokens: int        # tokens decoded for it (including those after the cut)


def truncate_at_stop(text: str, stops: Sequence[str] = STOP_SEQUENCES) -> str:
    """The text before the first stop sequence (all of it when none occurs)."""
    cuts = [index for index in (text.find(stop) for stop in stops) if index >= 0]
    return text[:min(cuts)] if cuts else text


def text_ids(tokenizer, ids: List[int]) -> List[int]:
    """The ids that stand for text: without end-of-document (ids of a model vocabulary padded
    past the tokenizer's are dropped by CodeTokenizer.decode itself)."""
    return [i for i in ids if i != tokenizer.eod_id]


def stop_sequence_seen(tokenizer, stops: Sequence[str] = STOP_SEQUENCES):
    """For generate(stop=...): which rows' newest tokens hold a stop sequence."""
    def seen(new_tokens: torch.Tensor) -> torch.Tensor:
        tails = new_tokens[:, -STOP_TAIL_TOKENS:].tolist()
        return torch.tensor([any(stop in tokenizer.decode(text_ids(tokenizer, tail))
                                 for stop in stops) for tail in tails])
    return seen


def completion_text(tokenizer, prompt_ids: List[int], new_ids: List[int]) -> str:
    """The decoded continuation. Decoding prompt and continuation together keeps a character
    whose bytes straddle the boundary whole; the prompt's own decoding is then cut off."""
    new_ids = text_ids(tokenizer, new_ids)
    prompt_text = tokenizer.decode(prompt_ids)
    whole = tokenizer.decode(prompt_ids + new_ids)
    return whole[len(prompt_text):] if whole.startswith(prompt_text) else tokenizer.decode(new_ids)


def generate_completions(model, tokenizer, problems: Sequence[Problem], samples_per_task: int = 1,
                         temperature: float = 0.0, top_p: float = 1.0, max_new_tokens: int = 512,
                         batch_size: int = 8, seed: int = 0, mode: Optional[str] = None,
                         progress: bool = True) -> List[Completion]:
    """``samples_per_task`` completions of every problem, in (problem, sample) order."""
    if samples_per_task < 1 or batch_size < 1 or max_new_tokens < 1:
        raise ValueError(f"samples_per_task={samples_per_task}, batch_size={batch_size}, "
                         f"max_new_tokens={max_new_tokens}: each must be >= 1")
    if temperature <= 0.0 and samples_per_task > 1:
        raise ValueError(f"temperature {temperature} is greedy decoding: all {samples_per_task} "
                         "samples of a task would be the same; pass --samples-per-task 1 or a "
                         "temperature > 0 (e.g. 0.8 with --top-p 0.95 for pass@10 and pass@100)")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p={top_p}; it must be in (0, 1]")
    prompts = {problem.task_id: tokenizer.encode(problem.prompt) for problem in problems}
    # A ConfigError (exit 2 naming --max-new-tokens and the limit), as scripts/generate.py's.
    check_positions([len(ids) for ids in prompts.values()], max_new_tokens,
                    model.config.max_position_embeddings,
                    [f"{task_id}'s prompt" for task_id in prompts])
    # Rows of similar prompt lengths share a batch: every step attends over the longest row.
    rows = sorted(((p.task_id, s) for p in problems for s in range(samples_per_task)),
                  key=lambda row: len(prompts[row[0]]))
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    stop = stop_sequence_seen(tokenizer)
    done = {}
    with tqdm(total=len(rows), desc="generate", unit="sample", disable=not progress) as bar:
        for start in range(0, len(rows), batch_size):
            batch = rows[start:start + batch_size]
            inputs = [torch.tensor(prompts[task_id], device=device) for task_id, _ in batch]
            outputs = generate(model, inputs, max_new_tokens, temperature=temperature,
                               top_p=top_p, mode=mode, eos_id=tokenizer.eod_id,
                               generator=generator, stop=stop)
            for (task_id, sample), prompt, output in zip(batch, inputs, outputs):
                new_ids = output[len(prompt):].tolist()
                text = completion_text(tokenizer, prompts[task_id], new_ids)
                done[task_id, sample] = Completion(task_id, sample, truncate_at_stop(text),
                                                   len(new_ids))
            bar.update(len(batch))
    return [done[p.task_id, s] for p in problems for s in range(samples_per_task)]
