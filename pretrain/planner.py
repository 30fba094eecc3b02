"""What a preset and a layout cost before a GPU is touched: parameters, FLOPs, memory per GPU, time.

    plan = make_plan(cfg, world_size)            # cfg: the composed run config (pretrain/config.py)
    print(format_table([plan]))

Everything is counted from the code of model/ as it is, per rank (the largest pipeline stage):

- Parameters: per module of model/layer.py and model/plt_model.py (embedding, per layer qkv/proj/
  gate/norms/SwiGLU, final norm, head), split as megatron's parallel linears split them. A one-rank
  count equals ``sum(p.numel())`` of the built model (tests/test_planner.py).
- FLOPs per token: pretrain/flops.py ``flops_per_token`` (the function the trainer's MFU uses);
  nothing here recounts them. Recomputation adds one forward of the block (hardware, not model FLOPs).
- Memory: weights in the parameter dtype; gradients in megatron DDP's fp32 buffer
  (``grad_reduce_in_fp32``, pretrain/engine.py); Adam's fp32 master weights (bf16 only), m and v,
  divided over data-parallel ranks with ``parallel.distributed_optimizer``; activations: the bytes
  autograd holds at the end of one micro-batch's forward, term by term (``activation_terms``),
  times the micro-batches in flight under pipelining; plus an estimate of the backward's working set.
- Time: model FLOPs (+ recomputation) over ``peak x assumed utilisation``. The utilisation is an
  assumption (``hardware_utilization``), printed with the result, not a measurement.

The activation terms follow what this model's forward saves for backward (measured with
torch.distributed._tools.mem_tracker.MemTracker in tests/test_planner.py):
- RMSNorm (model/norm.py) computes in fp32: it saves an fp32 copy of its input and the normalised
  fp32 tensor (8 bytes per element whatever the dtype; in fp32 the copy is the input itself, which
  the gate norm then shares with the input norm).
- ``v`` is a view of the fused QKV output, so keeping loop 1's V keeps the whole QKV output.
- SwiGLU (megatron MLP, no fusion) saves fc1's output, silu's output, ``x_linear + offset`` and fc2's
  input. The attention output is o_proj's input (a view) in the plain loop; the gated loop saves
  both branches, the gate and the mixed result.
- The torch attention backend saves the local branch's [s, s] mask converted to the compute dtype;
  flash-attn needs none. Cross-entropy (megatron's vocab-parallel one) saves fp32 softmax [s, b, V/tp].
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from pretrain.flops import flops_per_token, peak_flops_per_device

GIB = 2**30
# GPU sizes users ask about (H100 80 GB, H200 141 GB), in GiB of usable device memory as
# torch.cuda.mem_get_info reports it on a free device (nominal 80 GB -> 79.1 GiB, 141 GB -> 139.8).
GPU_MEMORY_GIB = {"80GB": 79.1, "141GB": 139.8}
# A framework/CUDA-context/NCCL reserve and allocator fragmentation: the share of the GPU a plan
# should leave free (PyTorch's caching allocator typically loses 5-10% to fragmentation).
RESERVE_FRACTION = 0.10
ASSUMED_HARDWARE_UTILIZATION = 0.45


@dataclass
class Layout:
    """The parts of a run config that decide memory and time (see ``layout_of``)."""

    world_size: int
    tp: int = 1
    pp: int = 1
    vpp: Optional[int] = None
    sequence_parallel: bool = False
    distributed_optimizer: bool = False
    micro_batch_size: int = 1
    global_batch_size: int = 1
    seq_length: int = 128
    bf16: bool = False
    attention_backend: str = "flash"   # flash | torch: which kernel the GPU run would use

    @property
    def dp(self) -> int:
        return self.world_size // (self.tp * self.pp)

    @property
    def num_microbatches(self) -> int:
        return max(1, self.global_batch_size // (self.micro_batch_size * self.dp))


def layout_of(cfg, world_size: int, bf16: Optional[bool] = None,
              attention_backend: Optional[str] = None) -> Layout:
    """The Layout of a composed run config. bf16: train.precision (auto means a GPU run: bf16).
    attention_backend: model.attention_backend, with auto meaning flash on a GPU."""
    t, p = cfg.train, cfg.parallel
    if bf16 is None:
        bf16 = t.precision in ("auto", "bf16")
    if attention_backend is None:
        attention_backend = "torch" if cfg.model.attention_backend == "torch" else "flash"
    return Layout(world_size=world_size, tp=p.tp, pp=p.pp, vpp=p.vpp,
                  sequence_parallel=p.sequence_parallel,
                  distributed_optimizer=p.distributed_optimizer,
                  micro_batch_size=t.micro_batch_size, global_batch_size=t.global_batch_size,
                  seq_length=t.seq_length, bf16=bf16, attention_backend=attention_backend)


# -- parameters ------------------------------------------------------------------------------
def _kv_groups(m, tp: int) -> int:
    """megatron replicates KV heads when tp > num_query_groups (attention.py: one group per rank)."""
    groups = m.num_query_groups or m.num_attention_heads
    return max(groups, tp)


def _gated(m) -> bool:
    return m.num_loops > 1 and m.shared_kv


def layer_parameters(m, tp: int = 1) -> Dict[str, int]:
    """One layer's parameters on one tensor-parallel rank, by module (model/layer.py)."""
    h, heads = m.hidden_size, m.num_attention_heads
    head_dim = h // heads
    qkv_out = (heads + 2 * _kv_groups(m, tp)) * head_dim
    params = {
        "input_layernorm": h,
        "linear_qkv": h * qkv_out // tp,
        "linear_proj": h * h // tp,
        "pre_mlp_layernorm": h,
        "linear_fc1": h * 2 * m.ffn_hidden_size // tp,
        "linear_fc2": m.ffn_hidden_size * h // tp,
    }
    if _gated(m):
        params["gate_norm"] = h
        params["linear_gate"] = (h * heads + heads) // tp  # weight [heads, hidden] and bias
    return params


def parameters_per_stage(m, tp: int = 1, pp: int = 1) -> List[Dict[str, int]]:
    """Per pipeline stage (first to last), the parameters of one tensor-parallel rank by group."""
    stages = []
    per_layer = sum(layer_parameters(m, tp).values())
    for stage in range(pp):
        counts = {"layers": per_layer * m.num_layers // pp}
        if stage == 0:
            counts["embedding"] = m.vocab_size * m.hidden_size // tp
        if stage == pp - 1:
            counts["final_layernorm"] = m.hidden_size
            if m.untie_embeddings_and_output_weights or pp > 1:
                counts["output_layer"] = m.vocab_size * m.hidden_size // tp
        stages.append(counts)
    return stages


def total_parameters(m) -> int:
    """The model's parameters on one rank without model parallelism (= the unique parameters)."""
    return sum(parameters_per_stage(m)[0].values())


# -- activations -----------------------------------------------------------------------------
def _dims(m, layout: Layout):
    tp = layout.tp
    h, heads = m.hidden_size, m.num_attention_heads
    head_dim = h // heads
    tokens = layout.seq_length * layout.micro_batch_size
    return dict(
        tokens=tokens,
        # tensors in the [s, b, hidden] stream: split along the sequence under sequence parallelism
        stream_tokens=tokens // tp if layout.sequence_parallel else tokens,
        h=h, heads_local=heads // tp, head_dim=head_dim,
        q_local=h // tp, kv_local=_kv_groups(m, tp) * head_dim // tp,
        ffn_local=m.ffn_hidden_size // tp, vocab_local=m.vocab_size // tp,
        act_bytes=2 if layout.bf16 else 4,
    )


def layer_activation_terms(m, layout: Layout, gated: bool) -> Dict[str, int]:
    """Bytes one layer saves for backward in one loop of one micro-batch (no recomputation)."""
    d = _dims(m, layout)
    tok, st, B = d["tokens"], d["stream_tokens"], d["act_bytes"]
    h, q, kv, f = d["h"], d["q_local"], d["kv_local"], d["ffn_local"]
    seq, batch = layout.seq_length, layout.micro_batch_size
    norm = 2 * st * h * 4 + st * 4  # fp32 copy of the input, normalised fp32, rstd
    lse = batch * d["heads_local"] * seq * 4
    terms = {
        "norms": 2 * norm,
        "qkv_input": st * h * B,
        "v_copy": tok * kv * B,                 # V's own copy (model/attention.py _project)
        "rope_qk": tok * (q + kv) * B + 4 * seq * d["head_dim"] * B,
        "attention_output": tok * q * B + lse,  # also o_proj's input (a view) in the plain loop
        "mlp_input": st * h * B,
        "mlp_fc1_output": tok * 2 * f * B,
        "mlp_swiglu": 3 * tok * f * B,          # silu(x), x_linear + offset, fc2's input
    }
    if gated:
        # fp32: the gate norm's input is the input norm's (the same tensor); bf16: its own copy
        gate_norm = (1 if not layout.bf16 else 2) * st * h * 4 + st * 4
        terms["gate"] = gate_norm + st * h * B + 2 * tok * d["heads_local"] * B
        terms["local_branch"] = 2 * tok * q * B + lse  # y_local and the mixed output
        if layout.attention_backend == "torch":
            terms["local_mask"] = seq * seq * B
    return terms


def head_activation_terms(m, layout: Layout) -> Dict[str, int]:
    """Bytes saved outside the layers per micro-batch: loop transitions, final norm, head, loss."""
    d = _dims(m, layout)
    tok, st, B = d["tokens"], d["stream_tokens"], d["act_bytes"]
    norm = 2 * st * d["h"] * 4 + st * 4
    transitions = (m.num_loops - 1) if (m.clp and m.normalize_per_loop) else 0
    return {
        "token_ids": tok * 8,
        "loop_transitions": transitions * norm,
        "final_norm": norm,
        "head_input": st * d["h"] * B,
        "cross_entropy": tok * d["vocab_local"] * 4 + tok * (1 + 8),
    }


def loop1_kv_bytes(m, layout: Layout) -> int:
    """Loop 1's K (after RoPE) and V (its own copy) over the layers of a rank, held for the later
    loops; with recomputation they are what the block keeps besides its inputs."""
    d = _dims(m, layout)
    per_layer = d["tokens"] * 2 * d["kv_local"] * d["act_bytes"]
    return per_layer * m.num_layers // layout.pp


def activation_terms(m, layout: Layout, recompute: Optional[str] = None) -> Dict[str, int]:
    """What one micro-batch's forward leaves for its backward on one rank of the first stage (pp=1:
    the whole model). recompute: none | full (default: model.recompute)."""
    recompute = recompute or m.recompute
    layers = m.num_layers // layout.pp
    loops, gated = m.num_loops, _gated(m)
    terms: Dict[str, int] = {}
    if recompute == "full":
        d = _dims(m, layout)
        terms["layer_inputs"] = layers * loops * d["stream_tokens"] * d["h"] * d["act_bytes"]
        if gated:
            terms["loop1_kv"] = loop1_kv_bytes(m, layout)
        terms["rotary"] = layout.seq_length * d["head_dim"] * 4
    else:
        plain = sum(layer_activation_terms(m, layout, gated=False).values())
        later = sum(layer_activation_terms(m, layout, gated=gated).values())
        terms["loop1_layers"] = layers * plain
        if loops > 1:
            terms["later_loop_layers"] = layers * (loops - 1) * later
    terms.update(head_activation_terms(m, layout))
    return terms


def backward_working_set(m, layout: Layout, recompute: Optional[str] = None) -> int:
    """An estimate of what the backward adds at its peak on top of the saved activations: with
    recomputation one layer-loop's activations rebuilt plus their gradients (about as large),
    without it the gradients of the residual stream and of one layer's largest activation."""
    recompute = recompute or m.recompute
    d = _dims(m, layout)
    layer = sum(layer_activation_terms(m, layout, gated=_gated(m)).values())
    stream_grads = 2 * d["stream_tokens"] * d["h"] * d["act_bytes"]
    if recompute == "full":
        return 2 * layer + stream_grads
    return stream_grads + d["tokens"] * 2 * d["ffn_local"] * d["act_bytes"]


def microbatches_in_flight(m, layout: Layout) -> int:
    """Micro-batch chunks whose activations stage 0 holds at once (megatron's schedules): 1 without
    pipelining; 1F1B: pp; interleaved (PLT: the loops are the virtual chunks, model/pipeline.py):
    the warm-up of rank 0, 2 (pp - 1) + (vpp - 1) pp, plus the one in its forward, counted in
    chunks of one loop, converted here to whole micro-batches of all loops."""
    if layout.pp == 1:
        return 1
    vpp = m.num_loops if m.num_loops > 1 else 1
    total_chunks = layout.num_microbatches * vpp
    chunks = min(total_chunks, 2 * (layout.pp - 1) + (vpp - 1) * layout.pp + 1) if vpp > 1 else (
        min(layout.num_microbatches, layout.pp))
    return chunks / vpp if vpp > 1 else chunks


# -- the plan --------------------------------------------------------------------------------
@dataclass
class Plan:
    name: str
    num_loops: int
    layout: Layout
    recompute: str
    parameters: int                      # unique parameters
    parameters_per_rank: int             # the largest stage, one tensor-parallel rank
    flops_per_token: float               # model FLOPs per token, training (pretrain/flops.py)
    flops_per_token_breakdown: Dict[str, float]
    memory: Dict[str, float] = field(default_factory=dict)   # bytes per GPU, by item
    activations_other_recompute: float = 0.0                 # activations with the other setting
    loop1_kv: float = 0.0
    decode_kv_cache_per_sequence: float = 0.0
    step_time_s: float = 0.0
    tokens_per_s_per_gpu: float = 0.0
    hardware_utilization: float = ASSUMED_HARDWARE_UTILIZATION
    peak_tflops: float = 0.0
    warnings: List[str] = field(default_factory=list)
    gpu_sizes: List[str] = field(default_factory=lambda: list(GPU_MEMORY_GIB))

    @property
    def total_bytes(self) -> float:
        return sum(self.memory.values())


def flops_breakdown(m, seq_length: int) -> Dict[str, float]:
    """Training FLOPs per token split into loop 1, each later loop and the head, all from
    pretrain.flops.flops_per_token by differences (one formula, one source)."""
    def f(**changes):
        return flops_per_token(dataclasses.replace(m, **changes), seq_length)

    head = f(num_layers=0, num_loops=1)
    first = f(num_loops=1) - head
    later = (f(num_loops=2) - f(num_loops=1)) if m.num_loops > 1 else 0.0
    return {"head": head, "loop1_block": first, "later_loop_block": later}


def make_plan(cfg, world_size: int, *, bf16: Optional[bool] = None,
              attention_backend: Optional[str] = None, peak_tflops: Optional[float] = None,
              hardware_utilization: float = ASSUMED_HARDWARE_UTILIZATION,
              gpu_memory_gib: Optional[Dict[str, float]] = None) -> Plan:
    """The plan of a composed run config (pretrain/config.py: Config) on ``world_size`` GPUs."""
    m, t = cfg.model, cfg.train
    layout = layout_of(cfg, world_size, bf16=bf16, attention_backend=attention_backend)
    stages = parameters_per_stage(m, layout.tp, layout.pp)
    per_rank = max(sum(s.values()) for s in stages)
    weight_bytes = 2 if layout.bf16 else 4
    # megatron's optimizer: fp32 master copy (bf16 only) + Adam m and v, fp32
    optimizer_bytes = (4 if layout.bf16 else 0) + 8
    optimizer_shards = layout.dp if layout.distributed_optimizer else 1

    acts = activation_terms(m, layout)
    in_flight = microbatches_in_flight(m, layout)
    other = "none" if m.recompute == "full" else "full"
    memory = {
        "weights": per_rank * weight_bytes,
        "gradients": per_rank * 4,   # DDP's fp32 grad buffer (grad_reduce_in_fp32)
        "optimizer": per_rank * optimizer_bytes / optimizer_shards,
        "activations": sum(acts.values()) * in_flight,
        "backward_working_set": backward_working_set(m, layout),
    }
    fpt = flops_per_token(m, t.seq_length)
    peak = peak_tflops or t.peak_tflops or 989.0  # per GPU (pretrain/flops.py GPU_PEAK_TFLOPS)
    peak_flops = peak_flops_per_device(peak)
    breakdown = flops_breakdown(m, t.seq_length)
    # Full recomputation runs each layer's forward again: +1/3 of the block's training FLOPs.
    block = fpt - breakdown["head"]
    hardware_fpt = fpt + (block / 3 if m.recompute == "full" else 0.0)
    tokens_per_step = t.global_batch_size * t.seq_length
    step_time = tokens_per_step * hardware_fpt / (world_size * peak_flops * hardware_utilization)
    head_dim = m.hidden_size // m.num_attention_heads
    kv_row = 2 * (m.num_query_groups or m.num_attention_heads) * head_dim * weight_bytes
    window = m.swa_window + 1
    plan = Plan(
        name=m.name, num_loops=m.num_loops, layout=layout, recompute=m.recompute,
        parameters=total_parameters(m), parameters_per_rank=per_rank,
        flops_per_token=fpt, flops_per_token_breakdown=breakdown, memory=memory,
        activations_other_recompute=sum(activation_terms(m, layout, other).values()) * in_flight,
        loop1_kv=loop1_kv_bytes(m, layout) if _gated(m) else 0.0,
        # model/decoding.py: the full loop-1 cache plus a 65-token ring per later loop and layer
        decode_kv_cache_per_sequence=m.num_layers * kv_row * (
            t.seq_length + (m.num_loops - 1) * min(window, t.seq_length)),
        step_time_s=step_time, tokens_per_s_per_gpu=tokens_per_step / step_time / world_size,
        hardware_utilization=hardware_utilization, peak_tflops=peak,
    )
    plan.gpu_sizes = list(gpu_memory_gib or GPU_MEMORY_GIB)
    plan.warnings = fit_warnings(plan, gpu_memory_gib or GPU_MEMORY_GIB)
    return plan


def fit_warnings(plan: Plan, gpu_memory_gib: Dict[str, float]) -> List[str]:
    need = plan.total_bytes / GIB
    warnings = []
    for gpu, size in gpu_memory_gib.items():
        usable = size * (1 - RESERVE_FRACTION)
        if need > usable:
            warnings.append(
                f"R={plan.num_loops}: needs {need:.1f} GiB per GPU, more than a {gpu} GPU offers "
                f"({usable:.1f} GiB after a {RESERVE_FRACTION:.0%} reserve); "
                + _advice(plan))
    return warnings


def _advice(plan: Plan) -> str:
    lay = plan.layout
    tips = []
    if plan.recompute != "full":
        tips.append("model.recompute=full")
    if not lay.distributed_optimizer and lay.dp > 1:
        tips.append("parallel.distributed_optimizer=true")
    if lay.tp > 1 and not lay.sequence_parallel:
        tips.append("parallel.sequence_parallel=true")
    if lay.micro_batch_size > 1:
        tips.append("a smaller train.micro_batch_size")
    tips.append(f"a larger parallel.tp (now {lay.tp}) or parallel.pp (now {lay.pp})")
    return "try " + ", ".join(tips)


# -- the table -------------------------------------------------------------------------------
def _gib(x: float) -> str:
    return f"{x / GIB:.2f}"


def format_table(plans: List[Plan]) -> str:
    """One column per plan (e.g. num_loops 1..4 side by side), one row per quantity."""
    first = plans[0]
    lay = first.layout
    header = (f"{first.name}: world {lay.world_size} = tp {lay.tp} x pp {lay.pp} x dp {lay.dp}, "
              f"seq {lay.seq_length}, micro-batch {lay.micro_batch_size}, global batch "
              f"{lay.global_batch_size} ({lay.global_batch_size * lay.seq_length / 1e6:.2f}M tokens,"
              f" {lay.num_microbatches} micro-batches per rank), "
              f"{'bf16' if lay.bf16 else 'fp32'}, attention {lay.attention_backend}, "
              f"sequence_parallel={lay.sequence_parallel}, "
              f"distributed_optimizer={lay.distributed_optimizer}")
    other = "none" if first.recompute == "full" else "full"
    rows = [
        ("num_loops (R)", lambda p: str(p.num_loops)),
        ("parameters (B)", lambda p: f"{p.parameters / 1e9:.3f}"),
        ("parameters per GPU (B)", lambda p: f"{p.parameters_per_rank / 1e9:.3f}"),
        ("train GFLOPs/token", lambda p: f"{p.flops_per_token / 1e9:.1f}"),
        ("  loop 1 block", lambda p: f"{p.flops_per_token_breakdown['loop1_block'] / 1e9:.1f}"),
        ("  each later loop", lambda p: f"{p.flops_per_token_breakdown['later_loop_block'] / 1e9:.1f}"),
        ("  embedding+head", lambda p: f"{p.flops_per_token_breakdown['head'] / 1e9:.1f}"),
        ("GiB per GPU: weights", lambda p: _gib(p.memory["weights"])),
        ("  gradients (fp32)", lambda p: _gib(p.memory["gradients"])),
        ("  optimizer states", lambda p: _gib(p.memory["optimizer"])),
        (f"  activations (recompute={first.recompute})", lambda p: _gib(p.memory["activations"])),
        ("    of which loop-1 K/V", lambda p: _gib(p.loop1_kv)),
        ("  backward working set (est.)", lambda p: _gib(p.memory["backward_working_set"])),
        ("  total", lambda p: _gib(p.total_bytes)),
        (f"  activations if recompute={other}", lambda p: _gib(p.activations_other_recompute)),
        ("decode KV cache GiB/sequence", lambda p: f"{p.decode_kv_cache_per_sequence / GIB:.3f}"),
        ("fits " + " / ".join(first.gpu_sizes), lambda p: "/".join(
            "no" if any(f"a {gpu} GPU" in w for w in p.warnings) else "yes" for gpu in p.gpu_sizes)),
        ("step time s (est.)", lambda p: f"{p.step_time_s:.2f}"),
        ("tokens/s per GPU (est.)", lambda p: f"{p.tokens_per_s_per_gpu:,.0f}"),
    ]
    width = max(len(name) for name, _ in rows) + 2
    lines = [header, "-" * min(len(header), 100)]
    for name, value in rows:
        lines.append(name.ljust(width) + "".join(value(p).rjust(12) for p in plans))
    lines.append(f"(time: model FLOPs{' + recomputation' if first.recompute == 'full' else ''} at "
                 f"{first.hardware_utilization:.0%} of {first.peak_tflops:.0f} TFLOP/s per GPU, "
                 f"an assumption; the run's logged mfu is the measurement)")
    for p in plans:
        lines.extend("WARNING: " + w for w in p.warnings)
    return "\n".join(lines)
