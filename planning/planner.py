"""What a preset and a layout cost before a GPU is touched: parameters, FLOPs, memory per GPU, time.

    plan = make_plan(cfg, world_size)            # cfg: the composed run config (pretrain/config.py)
    print(format_table([plan]))

Everything is per rank (the largest pipeline stage):
- Parameters and activations: planning/memory.py, counted from the code of model/.
- FLOPs per token: model/flops.py ``flops_per_token`` (the function the trainer's MFU uses);
  nothing here recounts them. Recomputation adds one forward of the block (hardware, not model FLOPs).
- Memory: weights in the parameter dtype; gradients in megatron DDP's fp32 buffer
  (``grad_reduce_in_fp32``, pretrain/engines/megatron.py); Adam's fp32 master weights (bf16 only),
  m and v, divided over data-parallel ranks with ``parallel.distributed_optimizer``; activations
  times the micro-batches in flight; the backward's working set.
- Time: model FLOPs (+ recomputation) over ``peak x assumed utilisation``. The utilisation is an
  assumption (``hardware_utilization``), printed with the result, not a measurement.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from model.flops import GPU_PEAK_TFLOPS, flops_per_token, peak_flops_per_device
from planning.memory import (GIB, Layout, activation_terms, backward_working_set,  # noqa: F401
                             layer_parameters, layout_of, loop1_kv_bytes, microbatches_in_flight,
                             parameters_per_stage, total_parameters)

# GPU sizes users ask about (H100 80 GB, H200 141 GB), in GiB of usable device memory as
# torch.cuda.mem_get_info reports it on a free device (nominal 80 GB -> 79.1 GiB, 141 GB -> 139.8).
GPU_MEMORY_GIB = {"80GB": 79.1, "141GB": 139.8}
# A framework/CUDA-context/NCCL reserve and allocator fragmentation: the share of the GPU a plan
# should leave free (PyTorch's caching allocator typically loses 5-10% to fragmentation).
RESERVE_FRACTION = 0.10
ASSUMED_HARDWARE_UTILIZATION = 0.45


# -- the plan --------------------------------------------------------------------------------
@dataclass
class Plan:
    name: str
    num_loops: int
    layout: Layout
    recompute: str
    parameters: int                      # unique parameters
    parameters_per_rank: int             # the largest stage, one tensor-parallel rank
    flops_per_token: float               # model FLOPs per token, training (model/flops.py)
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


def flops_breakdown(model_cfg, seq_length: int) -> Dict[str, float]:
    """Training FLOPs per token split into loop 1, each later loop and the head, all from
    model.flops.flops_per_token by differences (one formula, one source)."""
    def f(**changes):
        return flops_per_token(dataclasses.replace(model_cfg, **changes), seq_length)

    head = f(num_layers=0, num_loops=1)
    first = f(num_loops=1) - head
    later = (f(num_loops=2) - f(num_loops=1)) if model_cfg.num_loops > 1 else 0.0
    return {"head": head, "loop1_block": first, "later_loop_block": later}


def make_plan(cfg, world_size: int, *, bf16: Optional[bool] = None,
              attention_backend: Optional[str] = None, peak_tflops: Optional[float] = None,
              hardware_utilization: float = ASSUMED_HARDWARE_UTILIZATION,
              gpu_memory_gib: Optional[Dict[str, float]] = None) -> Plan:
    """The plan of a composed run config (pretrain/config.py: Config) on ``world_size`` GPUs."""
    model, train = cfg.model, cfg.train
    layout = layout_of(cfg, world_size, bf16=bf16, attention_backend=attention_backend)
    stages = parameters_per_stage(model, layout.tp, layout.pp)
    per_rank = max(sum(s.values()) for s in stages)
    weight_bytes = 2 if layout.bf16 else 4
    # megatron's optimizer: fp32 master copy (bf16 only) + Adam m and v, fp32
    optimizer_bytes = (4 if layout.bf16 else 0) + 8
    optimizer_shards = layout.dp if layout.distributed_optimizer else 1

    acts = activation_terms(model, layout)
    in_flight = microbatches_in_flight(layout)
    other = "none" if model.recompute == "full" else "full"
    memory = {
        "weights": per_rank * weight_bytes,
        "gradients": per_rank * 4,   # DDP's fp32 grad buffer (grad_reduce_in_fp32)
        "optimizer": per_rank * optimizer_bytes / optimizer_shards,
        "activations": sum(acts.values()) * in_flight,
        "backward_working_set": backward_working_set(model, layout),
    }
    fpt = flops_per_token(model, train.seq_length)
    peak = peak_tflops or train.peak_tflops or GPU_PEAK_TFLOPS  # per GPU
    peak_flops = peak_flops_per_device(peak)
    breakdown = flops_breakdown(model, train.seq_length)
    # Full recomputation runs each layer's forward again: +1/3 of the block's training FLOPs.
    block = fpt - breakdown["head"]
    hardware_fpt = fpt + (block / 3 if model.recompute == "full" else 0.0)
    tokens_per_step = train.global_batch_size * train.seq_length
    step_time = tokens_per_step * hardware_fpt / (world_size * peak_flops * hardware_utilization)
    head_dim = model.hidden_size // model.num_attention_heads
    kv_row = 2 * (model.num_query_groups or model.num_attention_heads) * head_dim * weight_bytes
    window = model.swa_window + 1
    plan = Plan(
        name=model.name, num_loops=model.num_loops, layout=layout, recompute=model.recompute,
        parameters=total_parameters(model), parameters_per_rank=per_rank,
        flops_per_token=fpt, flops_per_token_breakdown=breakdown, memory=memory,
        activations_other_recompute=(sum(activation_terms(model, layout, other).values())
                                     * in_flight),
        loop1_kv=loop1_kv_bytes(model, layout) if model.has_gated_loops else 0.0,
        # model/decoding.py: the full loop-1 cache plus a 65-token ring per later loop and layer
        decode_kv_cache_per_sequence=model.num_layers * kv_row * (
            train.seq_length + (model.num_loops - 1) * min(window, train.seq_length)),
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
              f" {lay.num_micro_batches} micro-batches per rank), "
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
