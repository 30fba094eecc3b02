"""Model FLOPs of a PLT and the MFU they imply.

Training a PLT runs the shared block R times per token (docs/spec.md#training-cost),
forward and backward, while the embedding lookup and the output head run once. So per token

    forward = R * L * block(loop) + head,     training = 3 * forward   (backward = 2 x forward)

with 2 FLOPs per multiply-add and, per layer and token:
- projections: q, k, v (GQA: k and v have num_query_groups * head_dim columns), o, the SwiGLU MLP
  (three h x ffn matrices) and, in gated loops >= 2, the gate (heads x h);
- attention scores and the weighted sum (2 matmuls): causal, so a token attends on average to
  (S + 1) / 2 keys; loops >= 2 with shared K/V attend globally to loop 1's keys (same causal count)
  and locally to a window of min(swa_window + 1, ...) keys of their own.
MFU counts model FLOPs only: activation recomputation is not credited.
"""

from __future__ import annotations

import torch

# Dense peak per device in TFLOP/s. GPU: H100/H200 SXM bf16 dense (989). CPU: an assumption, not a
# measurement: one x86 core with two 256-bit FMA pipes at ~3 GHz does 2 x 8 x 2 x 3e9 ~ 0.1 TFLOP/s
# fp32, times torch's thread count. (On the shared 2-core dev machine a 2048^2 GEMM measured 40-90
# GFLOP/s depending on the neighbours' load.) Set train.peak_tflops for a real figure.
GPU_PEAK_TFLOPS = 989.0
CPU_PEAK_TFLOPS_PER_THREAD = 0.1


def _mean_causal_keys(seq_length: int, window: int | None = None) -> float:
    """Average number of keys a query sees under a causal mask, optionally capped by a window."""
    if window is None or window >= seq_length:
        return (seq_length + 1) / 2
    # positions 1..window see themselves and all before; later ones see exactly `window` keys
    total = window * (window + 1) / 2 + (seq_length - window) * window
    return total / seq_length


def flops_per_token(model_cfg, seq_length: int, training: bool = True) -> float:
    """Model FLOPs per token of one PLT forward (x3 with training=True)."""
    h, L, R = model_cfg.hidden_size, model_cfg.num_layers, model_cfg.num_loops
    heads = model_cfg.num_attention_heads
    head_dim = h // heads
    kv = (model_cfg.num_query_groups or heads) * head_dim
    projections = 2 * (h * h + 2 * h * kv + h * h) + 2 * 3 * h * model_cfg.ffn_hidden_size
    attention_dims = 2 * 2 * h  # QK^T and AV, per key
    causal = _mean_causal_keys(seq_length) * attention_dims
    first_loop = projections + causal
    if R > 1 and model_cfg.shared_kv:
        local = _mean_causal_keys(seq_length, model_cfg.swa_window + 1) * attention_dims
        later_loop = projections + 2 * heads * h + causal + local
    else:
        later_loop = first_loop
    head = 2 * h * model_cfg.vocab_size
    forward = L * (first_loop + (R - 1) * later_loop) + head
    return 3 * forward if training else forward


def peak_flops_per_device(peak_tflops: float | None) -> float:
    """FLOP/s of one device: the configured train.peak_tflops, else the defaults above."""
    if peak_tflops is None:
        peak_tflops = (GPU_PEAK_TFLOPS if torch.cuda.is_available()
                       else CPU_PEAK_TFLOPS_PER_THREAD * torch.get_num_threads())
    return peak_tflops * 1e12
