"""Text generation from a PLT model: token choice (greedy, temperature, top-p) and a sampling loop.

``sample`` recomputes the full forward for every new token: simple and exactly the training-time
function, used for the end-of-run sample. Cached cross-loop-parallel decoding lives in
model/decoding.py.
"""

from __future__ import annotations

from typing import Optional

import torch
from megatron.core import parallel_state
from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region


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


def full_vocab_logits(model, input_ids: torch.Tensor) -> torch.Tensor:
    """Logits [b, s, vocab] of the full forward, gathered over tensor-parallel ranks."""
    logits = model(input_ids)
    if parallel_state.get_tensor_model_parallel_world_size() > 1:
        logits = gather_from_tensor_model_parallel_region(logits)
    return logits


@torch.no_grad()
def sample(model, prompt_ids: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
           top_p: float = 1.0, eos_id: Optional[int] = None,
           generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Continue ``prompt_ids [b, s]`` by up to ``max_new_tokens``; returns ``[b, s + new]``.

    Rows that produced ``eos_id`` keep emitting it, and generation stops early once every row has.
    """
    was_training = model.training
    model.eval()
    tokens = prompt_ids
    finished = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
    for _ in range(max_new_tokens):
        next_logits = full_vocab_logits(model, tokens)[:, -1, :]
        next_token = choose_next_token(next_logits, temperature, top_p, generator)
        if eos_id is not None:
            next_token = torch.where(finished, torch.full_like(next_token, eos_id), next_token)
            finished |= next_token == eos_id
        tokens = torch.cat([tokens, next_token.unsqueeze(1)], dim=1)
        if eos_id is not None and bool(finished.all()):
            break
    model.train(was_training)
    return tokens
