"""The output head and its cross-entropy in chunks of tokens (``model.chunked_cross_entropy``).

Unfused, the head materialises logits [tokens, vocab] and megatron's cross-entropy saves their fp32
softmax for backward; the backward then adds the logits' gradient: at vocab 76,800 and 8192 tokens
2.5 GB of fp32 softmax plus as much again at the backward's peak. Here the head's matmul and the
loss run over chunks of tokens, and only each token's logsumexp (4 bytes) is kept: the backward
recomputes a chunk's logits, turns them into their gradient in place and feeds the two matmuls
(input and weight gradients) before the next chunk. The price is the head's forward matmul once
more in the backward (2 N V H FLOPs; the model's FLOPs count does not include it).

The arithmetic is the unfused path's: logits in the compute dtype, upcast to fp32 for the softmax
(megatron's ``vocab_parallel_cross_entropy`` does the same), the logits' gradient cast back to the
compute dtype for the matmuls. The weight gradient is summed over chunks in fp32 and rounded once.
Float64 inputs are computed in float64 throughout (the tests' reference precision).
Per-token losses come back (like megatron's), so any loss mask or reduction applies after.

Tensor parallelism: the vocab-parallel layout would need three all-reduces per chunk and the head's
input gradient reduced across ranks; not implemented, so the config refuses it for parallel.tp > 1
(model/config.py).
"""

from __future__ import annotations

from typing import Optional

import torch

# fp32 logits per chunk: 2^26 elements = 256 MiB (873 tokens at vocab 76,800). Large enough that
# the head's matmuls stay efficient, small next to the 2.5 GB it replaces.
CHUNK_LOGITS = 2**26


def chunk_tokens(vocab_size: int) -> int:
    return max(1, CHUNK_LOGITS // vocab_size)


def _chunk_logits(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    logits = hidden @ weight.t()
    return logits.to(torch.promote_types(logits.dtype, torch.float32))  # fp64 stays fp64


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk: int):
        tokens = hidden.shape[0]
        losses = torch.empty(tokens, dtype=torch.promote_types(hidden.dtype, torch.float32),
                             device=hidden.device)
        lse = torch.empty_like(losses)
        for start in range(0, tokens, chunk):
            rows = slice(start, start + chunk)
            logits = _chunk_logits(hidden[rows], weight)
            lse[rows] = torch.logsumexp(logits, dim=-1)
            losses[rows] = lse[rows] - logits.gather(1, labels[rows, None]).squeeze(1)
        ctx.save_for_backward(hidden, weight, labels, lse)
        ctx.chunk = chunk
        return losses

    @staticmethod
    def backward(ctx, grad_losses):
        hidden, weight, labels, lse = ctx.saved_tensors
        want_input, want_weight = ctx.needs_input_grad[:2]
        grad_hidden = torch.empty_like(hidden) if want_input else None
        grad_weight = torch.zeros(weight.shape, dtype=lse.dtype,
                                  device=weight.device) if want_weight else None
        for start in range(0, hidden.shape[0], ctx.chunk):
            rows = slice(start, start + ctx.chunk)
            # d loss_t / d logits_t = softmax_t - onehot(label_t), times the token's own upstream
            # gradient; computed in place on the recomputed logits.
            grad_logits = _chunk_logits(hidden[rows], weight)
            grad_logits.sub_(lse[rows, None]).exp_()
            index = torch.arange(grad_logits.shape[0], device=grad_logits.device)
            grad_logits[index, labels[rows]] -= 1.0
            grad_logits.mul_(grad_losses[rows, None])
            grad_logits = grad_logits.to(hidden.dtype)
            if want_input:
                grad_hidden[rows] = grad_logits @ weight
            if want_weight:
                grad_weight += grad_logits.t() @ hidden[rows]
        if want_weight:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         chunk: Optional[int] = None) -> torch.Tensor:
    """Per-token ``cross_entropy(hidden @ weight.T, labels)`` in fp32 (fp64 for fp64 inputs)
    without the full logits.

    hidden ``[..., H]``, weight ``[V, H]``, labels ``[...]`` (int, the same leading shape); returns
    fp32 losses of the labels' shape. ``chunk``: tokens per chunk (default: ``chunk_tokens(V)``)."""
    shape = labels.shape
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])
    chunk = chunk or chunk_tokens(weight.shape[0])
    losses = _LinearCrossEntropy.apply(flat_hidden, weight, labels.reshape(-1), chunk)
    return losses.view(shape)
