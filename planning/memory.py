"""Parameters and activation memory of a PLT preset under a parallel layout, per rank, counted from
the code of model/ as it is (planning/planner.py turns them into a plan per GPU).

- Parameters: per module of model/layer.py and model/plt_model.py (embedding, per layer qkv/proj/
  gate/norms/SwiGLU, final norm, head), split as megatron's parallel linears split them. A one-rank
  count equals ``sum(p.numel())`` of the built model (tests/test_planner.py).
- Activations: the bytes autograd holds at the end of one micro-batch's forward, term by term
  (``activation_terms``), times the micro-batches in flight under pipelining; plus an estimate of
  the backward's working set.

The activation terms follow what this model's forward saves for backward (measured with
torch.distributed._tools.mem_tracker.MemTracker in tests/test_planner.py):
- RMSNorm (model/norm.py) computes in fp32: it saves an fp32 copy of its input and the normalised
  fp32 tensor (8 bytes per element whatever the dtype; in fp32 the copy is the input itself, which
  the gate norm then shares with the input norm).
- ``v`` is a view of the fused QKV output, so keeping loop 1's V keeps the whole QKV output.
- SwiGLU (megatron MLP, no fusion) saves fc1's output, silu's output, ``x_linear + offset`` and fc2's
  input. The attention output is o_proj's input (a view) in the plain loop; the gated loop saves
  both branches, the gate and the mixed result.
- The torch attention backend runs the local branch blocked over a long sequence (model/kernels.py
  ``sliding_window_block``): it saves K/V padded by w rows (batch 1: the spans of B + w rows per
  block of B queries are views of it; batch > 1: the spans are copied), a [B, B + w] mask per
  block converted to the compute dtype and, when the query cannot be viewed as blocks (batch > 1:
  it is [s, b]-major; or s not a multiple of B), a copy of the query. A short sequence runs dense
  and saves the [s, s] mask instead. flash-attn and flex need none of these.
  Cross-entropy (megatron's vocab-parallel one) saves fp32 softmax [s, b, V/tp]; the chunked one
  (model.chunked_cross_entropy) a fp32 logsumexp per token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

from model.kernels import ATTENTION_BACKENDS, sliding_window_block
from pretrain.layout import ParallelLayout

GIB = 2**30


@dataclass
class Layout:
    """The parts of a run config that decide memory and time: the trainer's parallel layout
    (pretrain/layout.py: tp, pp, vpp, dp, the micro-batches; ``layout_of`` derives it as the
    trainer does) and what else the memory model reads."""

    parallel: ParallelLayout
    distributed_optimizer: bool = False
    seq_length: int = 128
    bf16: bool = False
    # Which kernel the GPU run would use: one of ATTENTION_BACKENDS but auto. Only torch saves
    # more than its inputs, output and logsumexp (torch_local_branch_terms); flash and flex don't.
    attention_backend: str = "flash"

    def __post_init__(self):
        if self.attention_backend not in ATTENTION_BACKENDS[1:]:
            raise ValueError(f"Layout.attention_backend={self.attention_backend!r}; use one of "
                             f"{ATTENTION_BACKENDS[1:]} (resolve auto first)")

    @classmethod
    def one_rank(cls, micro_batch_size: int, **fields) -> "Layout":
        """One rank running one micro-batch per step (a measured batch: tests, bench/)."""
        return cls(ParallelLayout(world_size=1, tp=1, pp=1, vpp=None, dp=1,
                                  micro_batch_size=micro_batch_size, num_micro_batches=1), **fields)

    # The parallel layout's values, read where the memory model reads them.
    world_size = property(lambda self: self.parallel.world_size)
    tp = property(lambda self: self.parallel.tp)
    pp = property(lambda self: self.parallel.pp)
    vpp = property(lambda self: self.parallel.vpp)
    dp = property(lambda self: self.parallel.dp)
    sequence_parallel = property(lambda self: self.parallel.sequence_parallel)
    micro_batch_size = property(lambda self: self.parallel.micro_batch_size)
    num_micro_batches = property(lambda self: self.parallel.num_micro_batches)

    @property
    def global_batch_size(self) -> int:
        return self.micro_batch_size * self.num_micro_batches * self.dp


def layout_of(cfg, world_size: int, bf16: Optional[bool] = None,
              attention_backend: Optional[str] = None) -> Layout:
    """The Layout of a composed run config. bf16: train.precision (auto means a GPU run: bf16).
    attention_backend: model.attention_backend, with auto meaning flash on a GPU (a planner
    cannot know whether the target has flash-attn; flash and flex cost the same here)."""
    train = cfg.train
    if bf16 is None:
        bf16 = train.precision in ("auto", "bf16")
    if attention_backend is None:
        attention_backend = ("flash" if cfg.model.attention_backend == "auto"
                             else cfg.model.attention_backend)
    # The trainer's own layout: its micro batch settled as validate() settles it (an impossible
    # world size is its ConfigError, as it would be the trainer's).
    return Layout(ParallelLayout.from_config(cfg, world_size),
                  distributed_optimizer=cfg.parallel.distributed_optimizer,
                  seq_length=train.seq_length, bf16=bf16, attention_backend=attention_backend)


# -- parameters ------------------------------------------------------------------------------
def _kv_groups(model_cfg, tp: int) -> int:
    """megatron replicates KV heads when tp > num_query_groups (attention.py: one group per rank)."""
    groups = model_cfg.num_query_groups or model_cfg.num_attention_heads
    return max(groups, tp)


def layer_parameters(model_cfg, tp: int = 1) -> Dict[str, int]:
    """One layer's parameters on one tensor-parallel rank, by module (model/layer.py)."""
    h, heads = model_cfg.hidden_size, model_cfg.num_attention_heads
    head_dim = h // heads
    qkv_out = (heads + 2 * _kv_groups(model_cfg, tp)) * head_dim
    params = {
        "input_layernorm": h,
        "linear_qkv": h * qkv_out // tp,
        "linear_proj": h * h // tp,
        "pre_mlp_layernorm": h,
        "linear_fc1": h * 2 * model_cfg.ffn_hidden_size // tp,
        "linear_fc2": model_cfg.ffn_hidden_size * h // tp,
    }
    if model_cfg.has_gated_loops and model_cfg.gate_input == "query":
        params["linear_gate"] = (head_dim * heads + heads) // tp  # weight [heads, head_dim], bias
    elif model_cfg.has_gated_loops:
        params["gate_norm"] = h
        params["linear_gate"] = (h * heads + heads) // tp  # weight [heads, hidden] and bias
    return params


def parameters_per_stage(model_cfg, tp: int = 1, pp: int = 1) -> List[Dict[str, int]]:
    """Per pipeline stage (first to last), the parameters of one tensor-parallel rank by group."""
    stages = []
    per_layer = sum(layer_parameters(model_cfg, tp).values())
    for stage in range(pp):
        counts = {"layers": per_layer * model_cfg.num_layers // pp}
        if stage == 0:
            counts["embedding"] = model_cfg.vocab_size * model_cfg.hidden_size // tp
        if stage == pp - 1:
            counts["final_layernorm"] = model_cfg.hidden_size
            if model_cfg.untie_embeddings_and_output_weights or pp > 1:
                counts["output_layer"] = model_cfg.vocab_size * model_cfg.hidden_size // tp
        stages.append(counts)
    return stages


def total_parameters(model_cfg) -> int:
    """The model's parameters on one rank without model parallelism (= the unique parameters)."""
    return sum(parameters_per_stage(model_cfg)[0].values())


# -- activations -----------------------------------------------------------------------------
def _dims(model_cfg, layout: Layout):
    tp = layout.tp
    h, heads = model_cfg.hidden_size, model_cfg.num_attention_heads
    head_dim = h // heads
    tokens = layout.seq_length * layout.micro_batch_size
    return dict(
        tokens=tokens,
        # tensors in the [s, b, hidden] stream: split along the sequence under sequence parallelism
        stream_tokens=tokens // tp if layout.sequence_parallel else tokens,
        h=h, heads_local=heads // tp, head_dim=head_dim,
        q_local=h // tp, kv_local=_kv_groups(model_cfg, tp) * head_dim // tp,
        ffn_local=model_cfg.ffn_hidden_size // tp, vocab_local=model_cfg.vocab_size // tp,
        act_bytes=2 if layout.bf16 else 4,
    )


def layer_activation_terms(model_cfg, layout: Layout, gated: bool) -> Dict[str, int]:
    """Bytes one layer saves for backward in one loop of one micro-batch (no recomputation)."""
    d = _dims(model_cfg, layout)
    tok, st, B = d["tokens"], d["stream_tokens"], d["act_bytes"]
    h, q, kv, f = d["h"], d["q_local"], d["kv_local"], d["ffn_local"]
    seq, batch = layout.seq_length, layout.micro_batch_size
    norm = 2 * st * h * 4 + st * 4  # fp32 copy of the input, normalised fp32, rstd
    lse = batch * d["heads_local"] * seq * 4
    # What the torch backend's local branch saves (gated loops). This loop's K (after RoPE) and V
    # are saved by the kernel that reads them, except when that branch runs blocked: it saves its
    # padded copies instead (local_kv_spans).
    torch_local = (torch_local_branch_terms(model_cfg, layout)
                   if gated and layout.attention_backend == "torch" else {})
    own_kv = 0 if "local_kv_spans" in torch_local else tok * kv * B
    terms = {
        "norms": 2 * norm,
        "qkv_input": st * h * B,
        "v_copy": own_kv,                       # V's own copy (model/attention.py _project)
        "rope_qk": tok * q * B + own_kv + 4 * seq * d["head_dim"] * B,
        "attention_output": tok * q * B + lse,  # also o_proj's input (a view) in the plain loop
        "mlp_input": st * h * B,
        "mlp_fc1_output": tok * 2 * f * B,
        "mlp_swiglu": 3 * tok * f * B,          # silu(x), x_linear + offset, fc2's input
    }
    if gated and model_cfg.gate_input == "query":
        # the rotated query is kept anyway (rope_qk); the logits and the sigmoid's output
        terms["gate"] = 2 * tok * d["heads_local"] * B
    elif gated:
        # fp32: the gate norm's input is the input norm's (the same tensor); bf16: its own copy
        gate_norm = (1 if not layout.bf16 else 2) * st * h * 4 + st * 4
        terms["gate"] = gate_norm + st * h * B + 2 * tok * d["heads_local"] * B
    if gated:  # both gates mix the same two branches (model/attention.py mix_branches)
        terms["local_branch"] = 2 * tok * q * B + lse  # y_local and the mixed output
        terms.update(torch_local)
    return terms


def torch_local_branch_terms(model_cfg, layout: Layout) -> Dict[str, int]:
    """What the torch backend's sliding-window call saves besides its inputs and output (the
    module docstring): blocked over a long sequence, dense with an [s, s] mask over a short one."""
    d = _dims(model_cfg, layout)
    seq, batch, B = layout.seq_length, layout.micro_batch_size, d["act_bytes"]
    window = model_cfg.swa_window
    block = sliding_window_block(seq, seq, window)
    if block is None:
        return {"local_mask": seq * seq * B}
    blocks = -(-seq // block)
    # batch 1: the spans are overlapping views of the padded K/V; batch > 1: their own copy
    span_rows = window + blocks * block if batch == 1 else batch * blocks * (block + window)
    terms = {
        "local_kv_spans": 2 * span_rows * d["kv_local"] * B,
        "local_mask": batch * blocks * block * (block + window) * B,
    }
    if batch > 1 or seq % block:
        terms["local_query_blocks"] = batch * blocks * block * d["q_local"] * B
    return terms


def head_activation_terms(model_cfg, layout: Layout) -> Dict[str, int]:
    """Bytes saved outside the layers per micro-batch: loop transitions, final norm, head, loss."""
    d = _dims(model_cfg, layout)
    tok, st, B = d["tokens"], d["stream_tokens"], d["act_bytes"]
    norm = 2 * st * d["h"] * 4 + st * 4
    transitions = ((model_cfg.num_loops - 1)
                   if (model_cfg.clp and model_cfg.normalize_per_loop) else 0)
    return {
        "token_ids": tok * 8,
        "loop_transitions": transitions * norm,
        "final_norm": norm,
        "head_input": st * d["h"] * B,
        # megatron's saves the fp32 softmax; the chunked head only a logsumexp per token
        "cross_entropy": (4 if model_cfg.chunked_cross_entropy else d["vocab_local"] * 4) * tok
        + tok * (1 + 8),
    }


def loop1_kv_bytes(model_cfg, layout: Layout) -> int:
    """Loop 1's K (after RoPE) and V (its own copy) over the layers of a rank, held for the later
    loops; with recomputation they are what the block keeps besides its inputs."""
    d = _dims(model_cfg, layout)
    per_layer = d["tokens"] * 2 * d["kv_local"] * d["act_bytes"]
    return per_layer * model_cfg.num_layers // layout.pp


def activation_terms(model_cfg, layout: Layout, recompute: Optional[str] = None) -> Dict[str, int]:
    """What one micro-batch's forward leaves for its backward on one rank of the first stage (pp=1:
    the whole model). recompute: none | full (default: model.recompute)."""
    recompute = recompute or model_cfg.recompute
    layers = model_cfg.num_layers // layout.pp
    loops, gated = model_cfg.num_loops, model_cfg.has_gated_loops
    terms: Dict[str, int] = {}
    if recompute == "full":
        d = _dims(model_cfg, layout)
        terms["layer_inputs"] = layers * loops * d["stream_tokens"] * d["h"] * d["act_bytes"]
        if gated:
            terms["loop1_kv"] = loop1_kv_bytes(model_cfg, layout)
        terms["rotary"] = layout.seq_length * d["head_dim"] * 4
    else:
        plain = sum(layer_activation_terms(model_cfg, layout, gated=False).values())
        later = sum(layer_activation_terms(model_cfg, layout, gated=gated).values())
        terms["loop1_layers"] = layers * plain
        if loops > 1:
            terms["later_loop_layers"] = layers * (loops - 1) * later
    terms.update(head_activation_terms(model_cfg, layout))
    return terms


def backward_working_set(model_cfg, layout: Layout, recompute: Optional[str] = None) -> int:
    """An estimate of what the backward adds at its peak on top of the saved activations: with
    recomputation one layer-loop's activations rebuilt plus their gradients (about as large),
    without it the gradients of the residual stream and of one layer's largest activation."""
    recompute = recompute or model_cfg.recompute
    d = _dims(model_cfg, layout)
    layer = sum(layer_activation_terms(model_cfg, layout, gated=model_cfg.has_gated_loops).values())
    stream_grads = 2 * d["stream_tokens"] * d["h"] * d["act_bytes"]
    if recompute == "full":
        return 2 * layer + stream_grads
    return stream_grads + d["tokens"] * 2 * d["ffn_local"] * d["act_bytes"]


def microbatches_in_flight(layout: Layout) -> int:
    """Micro-batch chunks whose activations stage 0 holds at once (megatron's schedules): 1 without
    pipelining; 1F1B: pp; interleaved (PLT: the loops are the virtual chunks, model/pipeline.py):
    the warm-up of rank 0, 2 (pp - 1) + (vpp - 1) pp, plus the one in its forward, counted in
    chunks of one loop, converted here to whole micro-batches of all loops."""
    if layout.pp == 1:
        return 1
    vpp = layout.vpp or 1
    total_chunks = layout.num_micro_batches * vpp
    chunks = min(total_chunks, 2 * (layout.pp - 1) + (vpp - 1) * layout.pp + 1) if vpp > 1 else (
        min(layout.num_micro_batches, layout.pp))
    return chunks / vpp if vpp > 1 else chunks
