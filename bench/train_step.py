"""The GPU check's training part (bench/gpu_check.py): one PLT timed over forward + backward +
AdamW steps, the 7B family's width cut to the layers one device holds, and a profiler table.

Parameters, gradients and AdamW's m and v are all in the compute dtype (bf16 on the GPU: 8 bytes a
parameter; megatron's trainer would add fp32 master weights and grads, which is what keeps a whole
7.6B plt_7b off one 141 GB GPU). MFU counts model FLOPs (model/flops.py, the trainer's function)
over the nominal peak and over a bf16 matmul measured on the device.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import time

import torch
import yaml

from model import ModelConfig, PLTModel
from model.flops import flops_per_token
from model.kernels import resolve_backend
from planning import planner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATE_BYTES_PER_PARAMETER = 8  # bf16 weight, grad, AdamW m and v (fp32 on CPU: 16)
# plt_7b's layer shapes; with --tiny a small stand-in of the same kind (head_dim 32, GQA).
SEVEN_B_WIDTH = dict(hidden_size=5120, num_attention_heads=40, num_query_groups=8,
                     ffn_hidden_size=27648)
TINY_WIDTH = dict(hidden_size=128, num_attention_heads=4, num_query_groups=2,
                  ffn_hidden_size=384, vocab_size=4096)


def load_preset(preset: str, **overrides) -> ModelConfig:
    with open(os.path.join(ROOT, "conf", "model", f"{preset}.yaml")) as stream:
        fields = yaml.safe_load(stream) or {}  # a preset of only defaults (plt_tiny) is empty
    return dataclasses.replace(ModelConfig(**fields), **overrides)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


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


def layout(cfg: ModelConfig, seq: int, batch: int, backend: str, bf16: bool) -> planner.Layout:
    return planner.Layout.one_rank(batch, seq_length=seq, bf16=bf16, attention_backend=backend)


def planned_bytes(cfg: ModelConfig, lay: planner.Layout, state_bytes: int) -> float:
    """The planner's activations + backward working set, plus this script's optimizer state."""
    return (sum(planner.activation_terms(cfg, lay).values()) + planner.backward_working_set(cfg, lay)
            + planner.total_parameters(cfg) * state_bytes)


def seven_b_width(loops: int, recompute: str, chunked: bool, seq: int, backend: str,
                  capacity_bytes: float, tiny: bool, fused: bool = False) -> ModelConfig:
    """plt_7b's width (the tiny stand-in with --tiny) with as many of its 14 layers as the planner
    says fit ``capacity_bytes`` (None if not even one does). The planner counts the unfused
    elementwise chains, so ``fused`` (model.fused_elementwise) gets the same layers: like for
    like."""
    base = load_preset("plt_tiny" if tiny else "plt_7b", name="plt_7b_width", num_loops=loops,
                       recompute=recompute, chunked_cross_entropy=chunked,
                       fused_elementwise=fused, attention_backend=backend,
                       **(TINY_WIDTH if tiny else SEVEN_B_WIDTH))
    state = STATE_BYTES_PER_PARAMETER * (1 if not tiny else 2)
    lay = layout(base, seq, 1, backend, bf16=not tiny)
    for layers in range(14, 0, -1):
        cfg = dataclasses.replace(base, num_layers=layers)
        if planned_bytes(cfg, lay, state) <= capacity_bytes:
            return cfg
    return None


def build(cfg: ModelConfig, device, dtype):
    torch.manual_seed(0)
    on_gpu = device.type == "cuda"
    net = PLTModel(cfg.build(params_dtype=dtype, use_cpu_initialization=not on_gpu)).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-15,
                                  weight_decay=0.1, **({"fused": True} if on_gpu else {}))
    return net, optimizer


def profile_table(step, device, rows: int = 25):
    """torch.profiler over one step: (text table, top ops as dicts), by device time on CUDA."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        step()
        sync(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    averages = prof.key_averages()
    top = sorted(averages, key=lambda e: getattr(e, key), reverse=True)[:rows]
    total = sum(getattr(e, key) for e in averages) or 1
    ops = [dict(op=e.key, calls=e.count, self_ms=getattr(e, key) / 1e3,
                share=getattr(e, key) / total) for e in top]
    return averages.table(sort_by=key, row_limit=rows), ops


def time_model(cfg: ModelConfig, device, dtype, seq, batch, steps, peak_tflops, measured_tflops,
               profile: bool = False) -> dict:
    """One configuration timed: its result row (and, with ``profile``, a profiler table)."""
    on_gpu = device.type == "cuda"
    chosen = resolve_backend(cfg.attention_backend, device, dtype, backward=True)
    net, optimizer = build(cfg, device, dtype)
    params = sum(p.numel() for p in net.parameters())
    tokens = torch.randint(0, cfg.vocab_size, (batch, seq), device=device)
    # Next-token targets, as the trainer's batches have them. (Targets equal to the inputs made the
    # task a copy at R=1, which the 7B width learned within the warm-up: loss 0.002 on the H200.)
    labels = tokens.roll(-1, dims=1)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = net(tokens, labels=labels).float().mean()
        loss.backward()
        optimizer.step()
        return loss

    try:
        for _ in range(2):  # warm-up: allocator, compilation (fused_elementwise), autotuning, AdamW
            step()
        sync(device)
        if on_gpu:
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(steps):
            loss = step()
        sync(device)
        elapsed = (time.perf_counter() - start) / steps
        model_flops = flops_per_token(cfg, seq) * batch * seq / elapsed
        row = dict(model=cfg.name, layers=cfg.num_layers, loops=cfg.num_loops,
                   recompute=cfg.recompute, chunked_ce=cfg.chunked_cross_entropy,
                   fused=cfg.fused_elementwise,
                   attention=chosen, params_b=params / 1e9, batch=batch, seq=seq,
                   ms_per_step=elapsed * 1e3, tokens_per_s=batch * seq / elapsed,
                   mfu=model_flops / (peak_tflops * 1e12),
                   mfu_of_measured_matmul=model_flops / (measured_tflops * 1e12),
                   loss=loss.item())
        state = STATE_BYTES_PER_PARAMETER * (1 if dtype != torch.float32 else 2)
        row["planned_gib"] = planned_bytes(cfg, layout(cfg, seq, batch, chosen, on_gpu),
                                           state) / 2**30
        if on_gpu:
            row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            row["planned_over_peak"] = row["planned_gib"] / row["peak_gib"]
        if profile:
            row["profile_table"], row["profile_top"] = profile_table(step, device)
        return row
    finally:
        del net, optimizer
        gc.collect()
        if on_gpu:
            torch.cuda.empty_cache()
