"""PLT self-attention (docs/spec.md#attention).

One module per layer serves every loop with the same q/k/v/o projections:

- loop 1 (and every loop when ``shared_kv=False``): plain causal attention over its own K/V. Loop 1's
  K/V (after RoPE) are returned so that later loops of the same layer can read them ("shared KV").
- loops >= 2 with ``shared_kv=True``: two branches mixed by a per-head, per-token gate before the
  output projection:
      y_global = attention(q_r, K_1, V_1)           causal, over loop 1's K/V
      y_local  = attention(q_r, K_r, V_r, window)   causal sliding window over this loop's K/V
      g        = sigmoid(W_g RMSNorm_g(x) + b_g)    x = the residual stream entering the layer
      out      = o_proj(g * y_global + (1 - g) * y_local)
  W_g and b_g start at zero (g = 0.5). W_g is a ColumnParallelLinear over the head dimension, so
  with tensor parallelism each rank owns the gate rows of its own heads.

  ``gate_input="query"`` (the published IQuest-Coder-V1 Loop models, docs/spec.md#gate) computes
  each head's gate from that head's own query instead: g_h = sigmoid(w_h . q_h + b_h), q_h after
  RoPE and unscaled (the 1/sqrt(d) belongs to the softmax only), W_g [heads, head_dim], no gate
  norm; g still weighs the global branch. The query is already split by head under tensor
  parallelism, so each rank applies its own rows of W_g to its own heads (no collective), and under
  sequence parallelism it covers the whole sequence.

Built on megatron-core's ``SelfAttention`` for the fused QKV projection, its GQA/TP head split and
its sharded checkpoint keys; only the forward is ours.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from megatron.core.models.common.embeddings.rope_utils import apply_rotary_pos_emb
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec, build_module

from model.fused_elementwise import fused_rotary
from model.kernels import AttentionBackend, backend_for, masked_attend

KV = Tuple[torch.Tensor, torch.Tensor]  # (keys, values), each [batch, seq, kv_heads, head_dim]


class PLTCoreAttention(MegatronModule):
    """The kernel call, as megatron's ``core_attention`` submodule: [b, s, h, d] in and out.

    The backend (model/kernels.py ``BACKENDS``) is chosen once for the device and dtype the module
    first runs on (the model is built on CPU and then moved, so its device is not known at build
    time), checked there with ``assert_supported``, and chosen again only if the module moves."""

    def __init__(self, config, layer_number, attn_mask_type=None, attention_type="self",
                 cp_comm_type=None, softmax_scale=None, pg_collection=None):
        super().__init__(config=config)
        self.softmax_scale = softmax_scale
        self._backend = None  # ((device, dtype), AttentionBackend)

    def backend(self, q: torch.Tensor) -> AttentionBackend:
        where = (q.device, q.dtype)
        if self._backend is None or self._backend[0] != where:
            self._backend = (where, backend_for(self.config.attention_backend, *where))
        return self._backend[1]

    def forward(self, q, k, v, window: Optional[int] = None):
        return self.backend(q)(q, k, v, window, self.softmax_scale)

    def masked(self, q, k, v, key_mask):
        """Decoding: one query per row over cache slots chosen by ``key_mask`` [b, slots]."""
        return masked_attend(q, k, v, key_mask, self.softmax_scale)


@dataclass
class PLTSelfAttentionSubmodules(SelfAttentionSubmodules):
    gate_norm: ModuleSpec | type | None = None
    linear_gate: ModuleSpec | type | None = None


def _zeros_(weight: torch.Tensor) -> torch.Tensor:
    return torch.nn.init.zeros_(weight)


class PLTSelfAttention(SelfAttention):
    def __init__(self, config, submodules: PLTSelfAttentionSubmodules, layer_number: int,
                 attn_mask_type=None, cp_comm_type=None, pg_collection=None):
        super().__init__(config=config, submodules=submodules, layer_number=layer_number,
                         cp_comm_type=cp_comm_type, pg_collection=pg_collection)
        self.gate_norm = None
        self.linear_gate = None
        # A hook point, not a computation: the loop diagnostics record the gate's logits here.
        self.gate_logits = torch.nn.Identity()
        if config.has_gated_loops:
            from_query = config.gate_input == "query"
            if not from_query:
                self.gate_norm = build_module(submodules.gate_norm, config=config,
                                              hidden_size=config.hidden_size,
                                              eps=config.layernorm_epsilon)
            # One gate per head: a column-parallel split of the head dimension, like the heads.
            # Its input is the hidden state, or (query gate) one head's query of kv_channels.
            self.linear_gate = build_module(
                submodules.linear_gate, config.kv_channels if from_query else config.hidden_size,
                config.num_attention_heads, config=config, init_method=_zeros_, bias=True,
                gather_output=False, skip_bias_add=False, is_expert=False,
                tp_comm_buffer_name="gate", tp_group=self.pg_collection.tp,
            )

    def _project(self, hidden_states, rotary_pos_emb):
        """Q, K, V in flash layout [b, s, heads, d], RoPE applied to Q and K."""
        q, k, v = self.get_query_key_value_tensors(hidden_states)  # each [s, b, heads, d]
        # V is a view of the fused QKV output; a copy of its own lets that output (h + 2 kv wide)
        # be freed: autograd, recomputation and loop 1's kept K/V then hold only V itself.
        v = v.contiguous()
        if rotary_pos_emb is not None and self.config.fused_elementwise:
            q, k = fused_rotary(q, rotary_pos_emb), fused_rotary(k, rotary_pos_emb)
        elif rotary_pos_emb is not None:
            q = apply_rotary_pos_emb(q, rotary_pos_emb, config=self.config)
            k = apply_rotary_pos_emb(k, rotary_pos_emb, config=self.config)
        return (t.transpose(0, 1) for t in (q, k, v))

    def gate(self, residual: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """g in (0, 1): [b, s, local_heads, 1] from the layer's input residual [s, b, hidden]
        (gate_input=hidden) or from the rotated query [b, s, local_heads, d] (gate_input=query)."""
        if self.gate_norm is None:
            # The linear's own forward would treat the query as a replicated input (and reduce
            # its gradient over TP): use its local rows directly, one per local head.
            weight, bias = self.linear_gate.weight, self.linear_gate.bias
            logits = torch.einsum("bshd,hd->bsh", query, weight.to(query.dtype)) + bias
        else:
            logits, _ = self.linear_gate(self.gate_norm(residual))  # [s, b, local_heads]
            logits = logits.transpose(0, 1)
        return torch.sigmoid(self.gate_logits(logits)).unsqueeze(-1)

    def mix_branches(self, residual, query, y_global, y_local):
        g = self.gate(residual, query)
        return g * y_global + (1.0 - g) * y_local

    def forward(self, hidden_states, residual, rotary_pos_emb, loop_index: Optional[int],
                first_loop_kv: Optional[KV] = None, decode_step=None):
        """One layer's attention for one loop (or, decoding, for several loops' rows at once).

        hidden_states: the layer's normed input [s, b, hidden]; residual: its un-normed input (the
        gate's input). Returns (output [s, b, hidden], bias, this loop's K/V).
        """
        if decode_step is not None:
            return self._decode(hidden_states, residual, rotary_pos_emb, decode_step)
        q, k, v = self._project(hidden_states, rotary_pos_emb)
        if loop_index == 0 or not self.config.shared_kv:
            y = self.core_attention(q, k, v)
        else:
            if first_loop_kv is None:
                raise ValueError(f"layer {self.layer_number}, loop {loop_index + 1}: loop 1's K/V "
                                 "were not passed; run loop 1 of this layer first")
            k1, v1 = first_loop_kv
            y_global = self.core_attention(q, k1, v1)
            y_local = self.core_attention(q, k, v, window=self.config.swa_window)
            y = self.mix_branches(residual, q, y_global, y_local)
        y = y.transpose(0, 1).flatten(2)  # [s, b, local_heads * d]
        out, bias = self.linear_proj(y)
        return out, bias, (k, v)

    def _decode(self, hidden_states, residual, rotary_pos_emb, step):
        """One new token per sequence for the consecutive loops in ``step.loops``, whose rows are
        stacked loop-major along the batch dimension (docs/spec.md#decoding). Loop 1's K/V of the new
        token go into the cache before any loop >= 2 reads it.

        With shared KV the attention takes two kernel calls whatever R is: every loop's query
        attends over loop 1's cache with the same per-sequence mask, so all loops' queries go in one
        call (R queries per sequence); the later loops' local branches over their own rings go in
        a second. Batching the loops' rows is what keeps PLT's per-token cost close to R=1's
        where decoding is bound by memory reads and kernel launches (GPUs)."""
        q, k, v = self._project(hidden_states, rotary_pos_emb)  # [rows, 1, heads, d]
        b, loops = step.batch_size, list(step.loops)
        if not self.config.shared_kv:  # the vanilla looped transformer: a full cache per loop
            outputs = []
            for j, loop in enumerate(loops):
                rows = slice(j * b, (j + 1) * b)
                keys, values, mask = step.write_full(loop, k[rows], v[rows])
                outputs.append(self.core_attention.masked(q[rows], keys, values, mask))
            y = torch.cat(outputs, dim=0)
        else:
            if loops[0] == 0:
                step.write_full(0, k[:b], v[:b])
            keys, values, mask = step.read_full(0)
            per_sequence = q.view(len(loops), b, *q.shape[2:]).transpose(0, 1)  # [b, R, heads, d]
            y = self.core_attention.masked(per_sequence, keys, values, mask)
            y = y.transpose(0, 1).reshape(q.shape)  # back to loop-major rows [R*b, 1, heads, d]
            local = slice(b if loops[0] == 0 else 0, None)  # rows of loops >= 2
            if loops[-1] > 0:
                ring_keys, ring_values, ring_mask = step.write_windows(
                    [loop for loop in loops if loop > 0], k[local], v[local])
                y_local = self.core_attention.masked(q[local], ring_keys, ring_values, ring_mask)
                y = torch.cat([y[:local.start], self.mix_branches(
                    residual[:, local], q[local], y[local], y_local)], dim=0)
        y = y.transpose(0, 1).flatten(2)  # [1, rows, local_heads * d]
        out, bias = self.linear_proj(y)
        return out, bias, None
