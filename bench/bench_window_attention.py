"""Sliding-window attention, forward+backward: the dense masked call against the blocked one.

    python -m bench.bench_window_attention [--seqs 2048,4096] [--heads 8] [--kv-heads 4]
        [--head-dim 64] [--window 64] [--threads 2] [--repeats 5] [--device cpu] [--dtype fp32]

One dense SDPA call with a [s, s] mask computes S^2 scores for the S (w + 1) that count; the torch
backend (model/kernels.py) runs the loops >= 2 local branch blocked instead, attending each block
of B queries to its B + w keys only. Per sequence length this times, side by side in one run:
- dense: SDPA over the full ``causal_window_mask`` (the backend's path for short inputs and decoding);
- blocked: ``blocked_window_attention`` with the block ``attend`` picks (window_block_size);
- causal: full causal attention without a window (``is_causal``; no mask), for scale.
Each round times every variant once, in turn, so that drift of the machine hits all of them
alike; the median over rounds is reported, with dense / blocked. torch's intra-op threads are set
explicitly (--threads); the thread count is printed with the result.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from model.kernels import blocked_window_attention, causal_window_mask, window_block_size

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def dense_masked(q, k, v, window):
    mask = causal_window_mask(q.shape[1], k.shape[1], window, q.device)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=mask, enable_gqa=True)
    return out.transpose(1, 2)


def causal(q, k, v, window):
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         is_causal=True, enable_gqa=True)
    return out.transpose(1, 2)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seqs", default="2048,4096")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    block = window_block_size(args.window)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    print(f"batch {args.batch}, heads {args.heads} (kv {args.kv_heads}), head_dim {args.head_dim}, "
          f"window {args.window} ({args.window + 1} keys), block {block}, {args.dtype} on "
          f"{device.type}, {torch.get_num_threads()} threads, forward+backward, median of "
          f"{args.repeats} rounds")
    print(f"{'seq':>6} {'dense ms':>10} {'blocked ms':>11} {'causal ms':>10} {'dense/blocked':>14}")
    for seq in (int(s) for s in args.seqs.split(",")):
        gen = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(args.batch, seq, n, args.head_dim, generator=gen)
                   .to(device, dtype).requires_grad_()
                   for n in (args.heads, args.kv_heads, args.kv_heads))
        variants = {
            "dense": lambda: dense_masked(q, k, v, args.window),
            "blocked": lambda: blocked_window_attention(q, k, v, args.window, block),
            "causal": lambda: causal(q, k, v, args.window),
        }
        grad = torch.randn(args.batch, seq, args.heads, args.head_dim, generator=gen).to(device, dtype)

        def step(fn):
            q.grad = k.grad = v.grad = None
            fn().backward(grad)

        for fn in variants.values():  # warm-up
            step(fn)
        times = {name: [] for name in variants}
        for _ in range(args.repeats):
            for name, fn in variants.items():
                sync()
                start = time.perf_counter()
                step(fn)
                sync()
                times[name].append(time.perf_counter() - start)
        ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
        print(f"{seq:>6} {ms['dense']:>10.1f} {ms['blocked']:>11.1f} {ms['causal']:>10.1f} "
              f"{ms['dense'] / ms['blocked']:>13.1f}x", flush=True)


if __name__ == "__main__":
    main()
