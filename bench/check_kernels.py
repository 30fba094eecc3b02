"""The GPU check's kernel part (bench/gpu_check.py): attention backends against float64 and the
chunked head + cross-entropy against the unfused one, on the device at hand.

Attention: ``model.kernels.attend`` with every backend that can run here (torch always; flex when
torch has flex_attention; flash when flash-attn imports on CUDA) against a float64 dense softmax over
the mask of ``causal_window_mask``: plain causal, windows 1, 64 (the 65-key window of swa_window=64)
and 65, GQA, q_len == k_len and one decoding query. Gradients of q, k, v for the windowed training
calls (flex has no CPU backward: forward only there). Tolerance: bf16 keeps 8 mantissa bits
(relative step 2^-8 = 0.004); an output is a convex mix of O(1) values, so 2e-2 absolute allows a
few roundings of inputs and accumulation; gradients, whose size grows with the sequence, 2e-2 of the
reference's largest entry; fp32: 1e-5 (gradients 1e-5 relative).

Chunked cross-entropy (model/chunked_cross_entropy.py) against the model's unfused head (full
logits, megatron's vocab-parallel loss): the mean loss and both gradients, within 2e-2 of the reference's
largest entry in bf16 (1e-5 in fp32); and its time and peak memory against the unfused head, and
against liger-kernel's fused linear cross-entropy when that imports (it needs triton: CUDA only).
"""

from __future__ import annotations

import time

import torch
from megatron.core import tensor_parallel

from model.chunked_cross_entropy import linear_cross_entropy
from model.flex_attention import flex_available
from model.kernels import attend, causal_window_mask, flash_available, sliding_window_block

WINDOWS = (None, 1, 64, 65)


def tolerance(dtype) -> float:
    return 2e-2 if dtype in (torch.bfloat16, torch.float16) else 1e-5


def reference(q, k, v, window):
    """float64 dense attention under the kernels' mask rule (GQA by repeating K/V heads)."""
    q, k, v = (t.double() for t in (q, k, v))
    groups = q.shape[2] // k.shape[2]
    k, v = (t.repeat_interleave(groups, dim=2) for t in (k, v))
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / q.shape[-1] ** 0.5
    mask = causal_window_mask(q.shape[1], k.shape[1], window, q.device)
    weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    return torch.einsum("bhqk,bkhd->bqhd", weights, v)


def _relative_errors(got, want):
    return [((g.double() - w).abs().max() / w.abs().max()).item() for g, w in zip(got, want)]


def gradient_errors(q, k, v, window, backend):
    """Largest error of the q, k, v gradients through ``attend`` over the float64 reference's
    largest entry."""
    inputs = [t.detach().requires_grad_() for t in (q, k, v)]
    weights = torch.randn(q.shape, generator=torch.Generator().manual_seed(1)).to(q.device)
    got = torch.autograd.grad((attend(*inputs, window=window, backend=backend).float()
                               * weights).sum(), inputs)
    exact = [t.detach().double().requires_grad_() for t in (q, k, v)]
    want = torch.autograd.grad((reference(*exact, window) * weights.double()).sum(), exact)
    return _relative_errors(got, want)


def attention_backends(device) -> list:
    on_gpu = device.type == "cuda"
    return (["torch"] + (["flex"] if flex_available() else [])
            + (["flash"] if on_gpu and flash_available() else []))


def check_attention(device, dtype, seq, head_dim) -> list:
    """One row per (backend, q_len, window): max |error| and, for training calls, gradients."""
    atol = tolerance(dtype)
    gen = torch.Generator(device="cpu").manual_seed(0)
    rows = []
    for q_len in (seq, 1):                         # training/prefill, and one decoding query
        q = torch.randn(2, q_len, 8, head_dim, generator=gen).to(device, dtype)
        k = torch.randn(2, seq, 2, head_dim, generator=gen).to(device, dtype)
        v = torch.randn(2, seq, 2, head_dim, generator=gen).to(device, dtype)
        for window in WINDOWS:
            expected = reference(q, k, v, window)
            for backend in attention_backends(device):
                row = dict(backend=backend, dtype=str(dtype).replace("torch.", ""), q_len=q_len,
                           k_len=seq, window=window, tolerance=atol, max_error=float("nan"))
                rows.append(row)
                try:  # a kernel that raises is a failed row, not the end of the check
                    row["max_error"] = (attend(q, k, v, window=window, backend=backend).double()
                                        - expected).abs().max().item()
                    row["ok"] = row["max_error"] <= atol
                    if backend == "torch":
                        row["blocked_by"] = sliding_window_block(q_len, seq, window)
                    trains = q_len == seq and window is not None
                    if trains and not (backend == "flex" and device.type == "cpu"):
                        row["grad_errors"] = gradient_errors(q, k, v, window, backend)
                        row["ok"] &= max(row["grad_errors"]) <= atol
                except Exception as failure:  # noqa: BLE001 recorded and printed
                    row.update(ok=False, error=repr(failure)[:300])
                    print(f"kernels: {backend} raised {failure!r}", flush=True)
                    continue
                grads = (" grads " + ", ".join(f"{e:.1e}" for e in row["grad_errors"])
                         if "grad_errors" in row else "")
                print(f"kernels: {backend:5s} {row['dtype']:8s} q_len {q_len:5d} k_len {seq:5d} "
                      f"window {str(window):4s} max |err| {row['max_error']:.2e}{grads} "
                      f"(tol {atol:.0e}) "
                      f"{'ok' if row['ok'] else 'FAIL'}", flush=True)
    return rows


def _unfused_loss(hidden, weight, labels):
    logits = (hidden @ weight.t()).unsqueeze(1)  # [tokens, b=1, vocab], the model's layout
    return tensor_parallel.vocab_parallel_cross_entropy(logits, labels.unsqueeze(1)).squeeze(1)


def _liger_loss():
    """liger-kernel's fused linear cross-entropy as a per-token loss function, or None."""
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
    except Exception:  # not installed, or no triton (CPU)
        return None
    # Its mean (liger computes the gradients in its forward, for a scalar loss).
    return lambda h, w, y: liger_fused_linear_cross_entropy(h, w, y, reduction="mean")


def _timed(fn, hidden, weight, labels, device):
    """(mean loss, grads of hidden and weight, seconds, peak bytes above the inputs)."""
    h, w = (t.detach().requires_grad_() for t in (hidden, weight))
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    start = time.perf_counter()
    loss = fn(h, w, labels).float().mean()
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() - base if device.type == "cuda" else 0
    return loss.detach(), (h.grad, w.grad), seconds, peak


def check_cross_entropy(device, dtype, tokens, hidden_size, vocab) -> dict:
    """The chunked head against the unfused one (and liger's when it imports): agreement, time and
    peak memory of one forward + backward of the head and loss."""
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(tokens, hidden_size, generator=gen).to(device, dtype)
    weight = (torch.randn(vocab, hidden_size, generator=gen) * 0.02).to(device, dtype)
    labels = torch.randint(0, vocab, (tokens,), generator=gen).to(device)
    candidates = {"unfused": _unfused_loss, "chunked": linear_cross_entropy}
    if _liger_loss() is not None:
        candidates["liger"] = _liger_loss()
    result, atol = {}, tolerance(dtype)
    want = None
    for name, fn in candidates.items():
        try:
            _timed(fn, hidden, weight, labels, device)  # warm-up (kernels, allocator)
            loss, grads, seconds, peak = _timed(fn, hidden, weight, labels, device)
        except Exception as failure:  # noqa: BLE001 e.g. liger without a working triton
            if name != "liger":
                raise
            result[name] = dict(error=repr(failure)[:300])
            print(f"cross-entropy: liger raised {failure!r}", flush=True)
            continue
        entry = dict(seconds=seconds, peak_bytes=peak)
        if want is None:
            want = (loss, grads)
        else:
            errors = _relative_errors([loss, *grads], [want[0].double(),
                                                       *(g.double() for g in want[1])])
            entry.update(errors=errors, ok=max(errors) <= atol)
        result[name] = entry
        del loss, grads
        print(f"cross-entropy: {name:8s} {tokens} tokens x vocab {vocab}: {seconds * 1e3:.1f} ms "
              f"fwd+bwd, peak {peak / 2**30:.2f} GiB above the inputs"
              + (f", max err/max ref (loss, dh, dW) {', '.join(f'{e:.1e}' for e in entry['errors'])}"
                 f" (tol {atol:.0e}) {'ok' if entry['ok'] else 'FAIL'}" if "errors" in entry
                 else ""), flush=True)
    return result
