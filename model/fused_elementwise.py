"""``model.fused_elementwise``: the elementwise chains between the matmuls as fused kernels.

Unfused, each of these is several torch kernels (each a full read and write of the activation) and
saves intermediates for backward:

- RMSNorm (model/norm.py): cast to fp32, square, mean, rsqrt, scale, weight, cast back;
- RoPE on Q and K (megatron's ``apply_rotary_pos_emb``): cos, sin, casts, chunk, neg, cat, two
  multiplications, an add and a cat, once for Q and once for K in every layer and loop;
- SwiGLU (megatron's MLP): chunk, silu, ``x_linear + 0.0``, multiply.

With the flag on, RMSNorm and RoPE are autograd functions whose forward and backward formulas
(below) each run as one ``torch.compile``d kernel (inductor), and the MLP takes megatron-core's own
fused SwiGLU (``bias_activation_fusion``: megatron's ``SwiGLUFunction``, the same pattern, compiled
by megatron's ``jit_fuser``, which is ``torch.compile`` on torch >= 2.2). None of these needs
Transformer Engine or Apex; megatron's ``apply_rope_fusion`` would (it is TE's kernel).

Why autograd functions around compiled formulas rather than compiling the formulas with autograd
inside: each saves a fixed set of tensors (the norm its input and weight, RoPE nothing but the
angles, SwiGLU fc1's output) whether its kernels are compiled or, past dynamo's recompile limit,
run eagerly; activation recomputation requires the recomputed forward to save what the forward
saved. And the compiled code runs without autograd, so grad mode and requires_grad add no
variants to recompile for (a training process compiles a few: Q's and K's head counts; decoding's
one-token shapes add more, and past the limit of 8 a formula runs eagerly, the same numbers).

The same numbers as the unfused path up to float rounding (tests/test_fused_elementwise.py: fp32
and bf16 on CPU, values and gradients). torch.compile runs where inductor has a backend: Triton on
CUDA, a C++ compiler on CPU. Each formula compiles on its first call (seconds) and again, with
dynamic shapes, the first time a shape changes.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from model.config import ConfigError


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm in fp32 at least (float64 stays float64), returned in the input's dtype: the one
    forward formula of model/norm.py for both paths."""
    wide = torch.promote_types(x.dtype, torch.float32)
    return F.rms_norm(x.to(wide), (x.shape[-1],), weight.to(wide), eps).to(x.dtype)


def rms_norm_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, eps: float):
    """d/dx and d/dweight of ``rms_norm``: with n = x * r, r = 1/sqrt(mean(x^2) + eps),
    dx = r * (g*w - n * mean(g*w*n)), dweight = sum over tokens of g * n."""
    wide = torch.promote_types(x.dtype, torch.float32)
    xw, g, w = x.to(wide), grad.to(wide), weight.to(wide)
    r = torch.rsqrt(xw.pow(2).mean(-1, keepdim=True) + eps)
    n = xw * r
    gn = g * w
    dx = r * (gn - n * (gn * n).mean(-1, keepdim=True))
    dweight = (g * n).reshape(-1, n.shape[-1]).sum(0)
    return dx.to(x.dtype), dweight.to(weight.dtype)


def rotary(t: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """RoPE as megatron's unfused ``_apply_rotary_pos_emb_bshd`` computes it for this model
    (rotary over the whole head dimension, halves not interleaved, no mscale): t [s, b, heads, d],
    freqs [s, 1 or b, 1, d] angles in fp32 (fp64 for a float64 model)."""
    cos = torch.cos(freqs).to(t.dtype)
    sin = torch.sin(freqs).to(t.dtype)
    first, second = torch.chunk(t, 2, dim=-1)
    return t * cos + torch.cat((-second, first), dim=-1) * sin


def rotary_backward(grad: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """d/dt of ``rotary``: the rotation's transpose, g*cos + [u2, -u1] where u = g*sin."""
    cos = torch.cos(freqs).to(grad.dtype)
    sin = torch.sin(freqs).to(grad.dtype)
    first, second = torch.chunk(grad * sin, 2, dim=-1)
    return grad * cos + torch.cat((second, -first), dim=-1)


@functools.lru_cache(maxsize=None)
def compiled(fn):
    """``fn`` through torch.compile, built once per function (lazily: importing the model compiles
    nothing)."""
    return torch.compile(fn)


def run_compiled(fn, *args):
    """``fn(*args)`` compiled. A compiler that cannot build kernels here (no C++ compiler on a CPU,
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


class _FusedRMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        ctx.save_for_backward(x, weight)
        ctx.eps = eps
        # detached: requires_grad is one more thing dynamo would compile a variant for
        return run_compiled(rms_norm, x.detach(), weight.detach(), eps)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        dx, dweight = run_compiled(rms_norm_backward, grad.contiguous(), x, weight, ctx.eps)
        return dx, dweight, None


class _FusedRotary(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t, freqs):
        ctx.save_for_backward(freqs)
        return run_compiled(rotary, t.detach(), freqs.detach())

    @staticmethod
    def backward(ctx, grad):
        (freqs,) = ctx.saved_tensors
        return run_compiled(rotary_backward, grad, freqs), None  # the angles are no parameter


def fused_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return _FusedRMSNorm.apply(x, weight, eps)


def fused_rotary(t: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    return _FusedRotary.apply(t, freqs)


def check_fused_elementwise(device: torch.device, dtype: torch.dtype) -> None:
    """Compile one norm on ``device`` now: a machine that cannot (ConfigError) is refused before a
    run writes anything, not at its first step. Seconds, once per process."""
    x = torch.ones(2, 8, device=device, dtype=dtype, requires_grad=True)
    fused_rms_norm(x, torch.ones(8, device=device, dtype=dtype), 1e-5)
