"""GPU check: attention kernels against float64, then a 1B PLT at R=1 and R=2 timed in bf16.

    python bench/gpu_check.py                        # on a GPU machine (bench/gpu_check.sh runs this)
    python bench/gpu_check.py --device cpu --tiny    # the same code path on a laptop, in seconds

1. Kernels: ``model.kernels.attend`` with every backend that can run here (torch always; flash when
   flash-attn imports and the device is CUDA) against a float64 dense softmax over the mask of
   ``causal_window_mask``: plain causal, the 65-key window (swa_window=64) and a 5-key window, GQA.
   The torch backend's windowed training calls run blocked (the line says so); their gradients of
   q, k, v are checked too. Tolerance: bf16 keeps 8 mantissa bits (relative step 2^-8 = 0.004); an
   output is a convex mix of O(1) values, so 2e-2 absolute allows a few roundings of inputs and
   accumulation; gradients, whose size grows with the sequence, 2e-2 of the reference's largest
   entry; fp32: 1e-5 (gradients 1e-5 relative).
2. Model: conf/model/plt_1b.yaml (``--tiny``: plt_tiny) at R=1 and R=2, bf16 parameters on the
   GPU (fp32 on CPU), forward + backward + AdamW for ``--steps`` timed steps after warm-up. Prints
   tokens/s, MFU from pretrain/flops.py (the trainer's function) against the nominal peak and
   against a bf16 matmul measured here, the peak memory next to the planner's estimate, and the
   attention backend the model chose.
Exit status 1 if a kernel check fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import torch
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from model import ModelConfig, PLTModel  # noqa: E402
from model.flops import GPU_PEAK_TFLOPS, flops_per_token  # noqa: E402
from model.kernels import (attend, causal_window_mask, flash_available,  # noqa: E402
                           resolve_backend, sliding_window_block)
from planning import planner  # noqa: E402
from pretrain.distributed import shutdown_distributed, single_process_world  # noqa: E402


def reference(q, k, v, window):
    """float64 dense attention under the kernels' mask rule (GQA by repeating K/V heads)."""
    q, k, v = (t.double() for t in (q, k, v))
    groups = q.shape[2] // k.shape[2]
    k, v = (t.repeat_interleave(groups, dim=2) for t in (k, v))
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / q.shape[-1] ** 0.5
    mask = causal_window_mask(q.shape[1], k.shape[1], window, q.device)
    weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    return torch.einsum("bhqk,bkhd->bqhd", weights, v)


def check_gradients(q, k, v, window, backend, tolerance) -> bool:
    """Gradients of q, k, v through ``attend`` against the float64 reference's, each as its largest
    error over the reference's largest entry."""
    inputs = [t.detach().requires_grad_() for t in (q, k, v)]
    weights = torch.randn(q.shape, generator=torch.Generator().manual_seed(1)).to(q.device)
    got = torch.autograd.grad((attend(*inputs, window=window, backend=backend).float()
                               * weights).sum(), inputs)
    exact = [t.detach().double().requires_grad_() for t in (q, k, v)]
    want = torch.autograd.grad((reference(*exact, window) * weights.double()).sum(), exact)
    errors = [((g.double() - w).abs().max() / w.abs().max()).item() for g, w in zip(got, want)]
    passed = max(errors) <= tolerance
    errors_text = ", ".join(f"{e:.1e}" for e in errors)
    print(f"kernels: {backend:5s} gradients window {str(window):4s} max |err|/max |grad| of q, k, "
          f"v {errors_text} (tol {tolerance:.0e}) {'ok' if passed else 'FAIL'}")
    return passed


def check_kernels(device, dtype, seq, head_dim) -> bool:
    backends = ["torch"] + (["flash"] if device.type == "cuda" and flash_available() else [])
    if device.type == "cuda" and not flash_available():
        print("kernels: flash-attn does not import here; checking the torch backend only")
    atol = 2e-2 if dtype in (torch.bfloat16, torch.float16) else 1e-5
    gen = torch.Generator(device="cpu").manual_seed(0)
    ok = True
    for q_len in (seq, 1):                         # training/prefill, and one decoding query
        q = torch.randn(2, q_len, 8, head_dim, generator=gen).to(device, dtype)
        k = torch.randn(2, seq, 2, head_dim, generator=gen).to(device, dtype)
        v = torch.randn(2, seq, 2, head_dim, generator=gen).to(device, dtype)
        for window in (None, 64, 4):
            expected = reference(q, k, v, window)
            for backend in backends:
                got = attend(q, k, v, window=window, backend=backend)
                error = (got.double() - expected).abs().max().item()
                passed = error <= atol
                ok &= passed
                block = sliding_window_block(q_len, seq, window) if backend == "torch" else None
                path = f" (blocked by {block})" if block else ""
                print(f"kernels: {backend:5s} {str(dtype).replace('torch.', ''):8s} q_len {q_len:5d} "
                      f"k_len {seq:5d} window {str(window):4s} max |err| {error:.2e} "
                      f"(tol {atol:.0e}) {'ok' if passed else 'FAIL'}{path}")
                if q_len == seq and window is not None:
                    ok &= check_gradients(q, k, v, window, backend, atol)
    return ok


def load_preset(name: str, **overrides) -> ModelConfig:
    with open(os.path.join(ROOT, "conf", "model", f"{name}.yaml")) as stream:
        fields = yaml.safe_load(stream) or {}  # a preset of only defaults (plt_tiny) is empty
    return dataclasses.replace(ModelConfig(**fields), **overrides)


def matmul_tflops(device, dtype) -> float:
    """A measured dense ceiling: an n^3 matmul, mean of 10 after 3 warm-ups."""
    n = 8192 if device.type == "cuda" else 512
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    sync(device)
    return 10 * 2 * n**3 / (time.perf_counter() - start) / 1e12


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_model(cfg: ModelConfig, device, dtype, seq, batch, steps, peak_tflops, measured_tflops):
    torch.manual_seed(0)
    on_gpu = device.type == "cuda"
    built = cfg.build(params_dtype=dtype, use_cpu_initialization=not on_gpu)
    net = PLTModel(built).to(device)
    chosen = resolve_backend(cfg.attention_backend, device, dtype)
    params = sum(p.numel() for p in net.parameters())
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-15,
                                  weight_decay=0.1, **({"fused": True} if on_gpu else {}))
    tokens = torch.randint(0, cfg.vocab_size, (batch, seq), device=device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = net(tokens, labels=tokens).float().mean()
        loss.backward()
        optimizer.step()
        return loss

    for _ in range(2):  # warm-up: allocator, kernels' autotuning, optimizer state
        step()
    sync(device)
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    sync(device)
    elapsed = (time.perf_counter() - start) / steps
    tokens_per_s = batch * seq / elapsed
    model_flops = flops_per_token(cfg, seq) * tokens_per_s
    layout = planner.Layout(world_size=1, micro_batch_size=batch, global_batch_size=batch,
                            seq_length=seq, bf16=dtype == torch.bfloat16,
                            attention_backend=chosen)
    planned = (sum(planner.activation_terms(cfg, layout).values())
               + planner.backward_working_set(cfg, layout))
    line = (f"model: {cfg.name} R={cfg.num_loops} recompute={cfg.recompute} {params / 1e9:.3f}B "
            f"params, batch {batch} x seq {seq}, attention {chosen}: {elapsed * 1e3:.1f} ms/step, "
            f"{tokens_per_s:,.0f} tokens/s, MFU {model_flops / (peak_tflops * 1e12):.1%} of "
            f"{peak_tflops:.3g} TFLOP/s ({model_flops / (measured_tflops * 1e12):.1%} of the "
            f"measured matmul {measured_tflops:.3g}), loss {loss.item():.3f}")
    if on_gpu:
        # weights + AdamW (m, v: same dtype as the weights here) + grads, then activations
        state = params * torch.finfo(dtype).bits // 8 * 4
        line += (f"; peak memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB, of which "
                 f"params+grads+AdamW {state / 2**30:.2f}; planner's activations+working set "
                 f"{planned / 2**30:.2f} GiB")
    print(line, flush=True)
    del net, optimizer
    if on_gpu:
        torch.cuda.empty_cache()
    return tokens_per_s


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="plt_tiny, short sequences (CPU check)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--seq", type=int, default=None)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--loops", default="1,2")
    parser.add_argument("--recompute", default="none", choices=["none", "full"])
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print("no CUDA device here; use --device cpu --tiny for the CPU dry run", file=sys.stderr)
            return 2
        torch.cuda.set_device(0)
        print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA "
              f"{torch.version.cuda}, flash-attn {'yes' if flash_available() else 'no'}", flush=True)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    seq = args.seq or (128 if args.tiny else 8192)

    # --tiny: 300 tokens, long enough for the torch backend's blocked window path, with a part block
    ok = check_kernels(device, dtype, seq=min(seq, 1024) if not args.tiny else 300,
                       head_dim=32 if args.tiny else 128)
    single_process_world()
    measured = matmul_tflops(device, dtype)
    peak = GPU_PEAK_TFLOPS if device.type == "cuda" else measured
    print(f"matmul: {measured:.3g} TFLOP/s measured ({str(dtype).replace('torch.', '')})", flush=True)
    rates = {}
    for loops in [int(r) for r in args.loops.split(",")]:
        cfg = load_preset("plt_tiny" if args.tiny else "plt_1b", num_loops=loops,
                          recompute=args.recompute)
        rates[loops] = time_model(cfg, device, dtype, seq, args.batch, args.steps, peak, measured)
    if len(rates) > 1:
        base = min(rates)
        print("tokens/s relative to R=%d: " % base + ", ".join(
            f"R={r} {rates[r] / rates[base]:.2f}" for r in sorted(rates)))
    print("kernel checks: " + ("all ok" if ok else "FAILED"))
    shutdown_distributed()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
