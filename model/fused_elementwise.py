"""``model.fused_elementwise``: the elementwise chains between the matmuls as fused kernels.

Unfused, each of these is several torch kernels (each a full read and write of the activation) and
saves intermediates for backward:

- RMSNorm (model/norm.py): cast to fp32, square, mean, rsqrt, scale, weight, cast back;
- RoPE on Q and K (megatron's ``apply_rotary_pos_emb``): cos, sin, casts, chunk, neg, cat, two
  multiplications, an add and a cat, once for Q and once for K in every layer and loop;
- SwiGLU (megatron's MLP): chunk, silu, ``x_linear + 0.0``, multiply.

With the flag on, RMSNorm and RoPE run the same formulas below through ``torch.compile`` (inductor:
one generated kernel for the forward and one for the backward, recomputing what is cheap instead of
saving it), and the MLP takes megatron-core's own fused SwiGLU (``bias_activation_fusion``:
megatron's ``SwiGLUFunction``, its forward and hand-written backward compiled by megatron's
``jit_fuser``, which is ``torch.compile`` on torch >= 2.2; it saves only fc1's output). None of
these needs Transformer Engine or Apex; megatron's ``apply_rope_fusion`` would (it is TE's kernel).

The same numbers as the unfused path up to float rounding (tests/test_fused_elementwise.py: fp32
on CPU, values and gradients). torch.compile runs on any device torch has an inductor backend for:
Triton on CUDA, C++ (a C compiler) on CPU. Each function compiles on its first call (seconds) and
again, with dynamic shapes, the first time a shape changes (training, evaluation and decoding
shapes then share one graph per dtype and grad mode).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from model.config import ConfigError


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm in fp32 at least (float64 stays float64), returned in the input's dtype: the one
    formula of model/norm.py for both paths."""
    wide = torch.promote_types(x.dtype, torch.float32)
    return F.rms_norm(x.to(wide), (x.shape[-1],), weight.to(wide), eps).to(x.dtype)


def rotary(t: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """RoPE as megatron's unfused ``_apply_rotary_pos_emb_bshd`` computes it for this model
    (rotary over the whole head dimension, halves not interleaved, no mscale): t [s, b, heads, d],
    freqs [s, 1 or b, 1, d] angles in fp32 (fp64 for a float64 model)."""
    cos = torch.cos(freqs).to(t.dtype)
    sin = torch.sin(freqs).to(t.dtype)
    first, second = torch.chunk(t, 2, dim=-1)
    return t * cos + torch.cat((-second, first), dim=-1) * sin


@functools.lru_cache(maxsize=None)
def compiled(fn):
    """``fn`` through torch.compile, built once per function (lazily: importing the model compiles
    nothing). ``fullgraph`` because a graph break would leave the chain unfused without a word."""
    return torch.compile(fn, fullgraph=True)


def run_compiled(fn, *args):
    """``fn(*args)`` compiled. A compiler that cannot build kernels here (no C compiler on a CPU,
    no working Triton on a GPU) is the machine's setup, not a bug: a ConfigError (exit status 2)
    naming the key. The norm runs first in every layer, so it meets such a failure before
    megatron's SwiGLU would."""
    try:
        return compiled(fn)(*args)
    except torch._dynamo.exc.BackendCompilerFailed as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ConfigError(
            f"model.fused_elementwise=true but torch.compile cannot build its kernels on "
            f"{args[0].device.type} here ({reason}); install what it names (a C++ compiler for a "
            f"CPU, Triton for a GPU) or set model.fused_elementwise=false") from None


def fused_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return run_compiled(rms_norm, x, weight, eps)


def fused_rotary(t: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    return run_compiled(rotary, t, freqs)


def check_fused_elementwise(device: torch.device, dtype: torch.dtype) -> None:
    """Compile one norm on ``device`` now: a machine that cannot (ConfigError) is refused before a
    run writes anything, not at its first step. Seconds, once per process."""
    x = torch.ones(2, 8, device=device, dtype=dtype, requires_grad=True)
    fused_rms_norm(x, torch.ones(8, device=device, dtype=dtype), 1e-5)
