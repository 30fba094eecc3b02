"""Text generation from a PLT model: token choice (greedy, temperature, top-p) and the sampling
loops over the cached decoder of model/decoding.py.

- ``generate(model, prompts, ...)``: a list of 1-D prompts of any lengths -> list of sequences.
- ``sample(model, prompt_ids, ...)``: a [b, s] tensor of equal-length prompts -> [b, s + new].
Both take a bare PLTModel or one wrapped by DDP (``.module``).
"""

from __future__ import annotations

from typing import Callable, List, Optional

import torch

from model.decoding import LoopDecoder
from model.unwrap import unwrap


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
    ``mode`` None lets LoopDecoder choose (sequential for a clp=false model). ``stop``, given the
    new tokens so far [b, t], marks the rows that are done ([b] bools: a stop sequence appeared);
    decoding ends once every row produced ``eos_id`` or was marked (rows are not cut at marks)."""
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
