"""One PLT decoder layer and its megatron-core module spec.

Llama-style pre-norm (docs/spec.md#notation): x + attn(RMSNorm(x)), then + SwiGLU(RMSNorm(.)).
It reuses megatron's ``TransformerLayer`` for building its submodules from the spec, its pipeline
layer numbering and its sharded checkpoint keys; the forward is ours because PLT's attention takes
two things megatron's layer does not pass: the un-normed residual (the gate's input) and loop 1's
K/V of this layer.

Submodule names match megatron's GPTModel local spec (input_layernorm, self_attention.linear_qkv,
self_attention.linear_proj, pre_mlp_layernorm, mlp.linear_fc1, mlp.linear_fc2), so a GPTModel
state dict loads into a one-loop PLT model unchanged.
"""

from __future__ import annotations

from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_layer import TransformerLayer, TransformerLayerSubmodules

from model.attention import PLTCoreAttention, PLTSelfAttention, PLTSelfAttentionSubmodules
from model.norm import RMSNorm


class PLTLayer(TransformerLayer):
    def forward(self, hidden_states, rotary_pos_emb, loop_index, first_loop_kv=None,
                decode_step=None):
        """hidden_states [s, b, hidden] -> (hidden_states, this loop's K/V of this layer).

        ``decode_step`` (model/decoding.py) switches attention to the cached one-token path.
        """
        residual = hidden_states
        attn_out, attn_bias, kv = self.self_attention(
            self.input_layernorm(hidden_states), residual, rotary_pos_emb, loop_index,
            first_loop_kv, decode_step,
        )
        hidden_states = residual + _with_bias(attn_out, attn_bias)
        mlp_out, mlp_bias = self.mlp(self.pre_mlp_layernorm(hidden_states))
        return hidden_states + _with_bias(mlp_out, mlp_bias), kv


def _with_bias(out, bias):
    return out if bias is None else out + bias


def plt_layer_spec() -> ModuleSpec:
    """The PLT layer built only from megatron-core's own (non-TE, non-Apex) modules: runs anywhere."""
    return ModuleSpec(
        module=PLTLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=RMSNorm,
            self_attention=ModuleSpec(
                module=PLTSelfAttention,
                submodules=PLTSelfAttentionSubmodules(
                    linear_qkv=ColumnParallelLinear,
                    core_attention=PLTCoreAttention,
                    linear_proj=RowParallelLinear,
                    gate_norm=RMSNorm,
                    linear_gate=ColumnParallelLinear,
                ),
            ),
            pre_mlp_layernorm=RMSNorm,
            mlp=ModuleSpec(
                module=MLP,
                submodules=MLPSubmodules(
                    linear_fc1=ColumnParallelLinear, linear_fc2=RowParallelLinear
                ),
            ),
        ),
    )
