"""Text generation from a PLT model: token choice (greedy, temperature, top-p) and the sampling
loops over the cached decoder of model/decoding.py.

- ``generate(model, prompts, ...)``: a list of 1-D prompts of any lengths -> list of sequences.
- ``sample(model, prompt_ids, ...)``: a [b, s] tensor of equal-length prompts -> [b, s + new].
- ``check_sampling_flags(...)``: the sampling flags' valid ranges, one check for every tool that
  takes them (scripts/generate.py, scripts/evaluate.py).
Both take a bare PLTModel or one wrapped by DDP (``.module``).
"""

from __future__ import annotations

import math
from typing import Callable, List, Optional

import torch

from model.config import ConfigError
from model.decoding import LoopDecoder
from model.unwrap import unwrap

MAX_SEED = 2 ** 63 - 1  # torch.Generator.manual_seed takes a signed 64-bit seed without wrapping


def check_sampling_flags(temperature: float, top_p: float, max_new_tokens: int, seed: int) -> None:
    """Refuse a sampling flag outside its valid range before any model is loaded (ConfigError:
    exit 2 naming the flag and the range). NaN fails every comparison, so each test is written as
    what is valid (`0 <= nan` is False), never as what is not."""
    rules = [("--temperature", temperature, math.isfinite(temperature) and temperature >= 0,
              "a finite number, 0 (greedy) or more"),
             ("--top-p", top_p, 0 < top_p <= 1, "in (0, 1] (1: no nucleus cut)"),
             ("--max-new-tokens", max_new_tokens, max_new_tokens >= 1, "at least 1"),
             ("--seed", seed, 0 <= seed <= MAX_SEED, f"in 0..{MAX_SEED}")]
    for flag, value, ok, rule in rules:
        if not ok:
            raise ConfigError(f"{flag} {value}: it must be {rule}")


def check_positions(prompt_lengths: List[int], max_new_tokens: int, max_positions: int,
                    names: Optional[List[str]] = None) -> None:
    """Every prompt and its new tokens must fit the model's positions (max_position_embeddings):
    past them the rotary angles were never trained, and a huge --max-new-tokens would run for
    minutes on a continuation that means nothing. ConfigError naming the flag and the limit;
    `names`: what to call each prompt (default "prompt #N")."""
    longest = max(prompt_lengths)
    if longest + max_new_tokens > max_positions:
        index = prompt_lengths.index(longest)
        name = names[index] if names else f"prompt #{index + 1}"
        room = max_positions - longest
        fix = (f"pass --max-new-tokens {room} or less" if room >= 1
               else "shorten the prompt")
        raise ConfigError(
            f"--max-new-tokens {max_new_tokens}: {name} has {longest} tokens, and with the new "
            f"ones it would reach position {longest + max_new_tokens}, past the model's "
            f"max_position_embeddings={max_positions} (the limit of prompt + new tokens); {fix}")


def choose_next_token(logits: torch.Tensor, temperature: float = 0.0, top_p: float = 1.0,
                      generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Pick one token per row of ``logits [b, vocab]``: greedy when temperature == 0."""
    if temperature <= 0.0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (always at least the top token).
        outside = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p
        sorted_probs = sorted_probs.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model, prompts: List[torch.Tensor], max_new_tokens: int, temperature: float = 0.0,
             top_p: float = 1.0, mode: Optional[str] = None, eos_id: Optional[int] = None,
             generator: Optional[torch.Generator] = None,
             stop: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> List[torch.Tensor]:
    """Continue each prompt (1-D token tensors, any lengths) by up to ``max_new_tokens``.
    ``mode`` None lets LoopDecoder choose (sequential for a clp=false or clp_offset=0 model).
    ``stop``, given the new tokens so far [b, t], marks the rows that are done ([b] bools: a stop
    sequence appeared); decoding ends once every row produced ``eos_id`` or was marked (rows are
    not cut at marks)."""
    model = unwrap(model)
    was_training = model.training
    model.eval()
    longest = max(len(p) for p in prompts)
    decoder = LoopDecoder(model, len(prompts), longest + max_new_tokens, mode)
    logits = decoder.prefill(prompts)
    new_tokens, finished = [], torch.zeros(len(prompts), dtype=torch.bool)
    for step in range(max_new_tokens):
        token = choose_next_token(logits, temperature, top_p, generator)
        new_tokens.append(token)
        if eos_id is not None:
            finished |= token.cpu() == eos_id
        if stop is not None:
            finished |= stop(torch.stack(new_tokens, dim=1)).cpu()
        if (eos_id is not None or stop is not None) and bool(finished.all()):
            break
        if step + 1 < max_new_tokens:
            logits = decoder.step(token)
    model.train(was_training)
    generated = torch.stack(new_tokens, dim=1) if new_tokens else torch.empty(len(prompts), 0)
    outputs = []
    for prompt, row in zip(prompts, generated.long()):
        if eos_id is not None and (row == eos_id).any():
            row = row[: int((row == eos_id).nonzero()[0]) + 1]
        outputs.append(torch.cat([prompt, row.to(prompt.device)]))
    return outputs


def sample(model, prompt_ids: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
           top_p: float = 1.0, eos_id: Optional[int] = None,
           generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Continue ``prompt_ids [b, s]`` by ``max_new_tokens``; returns ``[b, s + new]``. Rows that
    produced ``eos_id`` are padded with it to the common length."""
    rows = generate(model, list(prompt_ids), max_new_tokens, temperature, top_p,
                    eos_id=eos_id, generator=generator)
    width = max(len(r) for r in rows)
    pad = eos_id if eos_id is not None else 0
    return torch.stack([torch.cat([r, r.new_full((width - len(r),), pad)]) for r in rows])
