"""Our weight names and layouts <-> the published tensor names (docs/spec.md#published-formats).

Ours are a PLTModel's at TP=PP=1 (pretrain.checkpoint.read_weights gives them whatever layout wrote
the checkpoint); two of them are fused:

- ``self_attention.linear_qkv.weight`` in megatron-core's GQA-interleaved row layout: for each
  query group g, the rows of its heads' queries (heads/groups x head_dim), then its key rows, then
  its value rows (megatron/core/transformer/attention.py, SelfAttention.get_query_key_value_tensors:
  the output is viewed as [groups, (heads/groups + 2) x head_dim] and split in that order). Query
  head j of group g is head g * heads/groups + j, which is the published q_proj's head order, and
  group g is key/value head g (Llama's repeat_kv pairs them the same way).
- ``mlp.linear_fc1.weight`` = [gate; up]: megatron's gated linear unit chunks fc1's output in two
  and applies the activation to the first half (megatron/core/transformer/mlp.py), the published
  gate_proj (the SiLU branch).

The loop >= 2 gate: ``linear_gate`` [heads, hidden or head_dim] + bias and (hidden gate)
``gate_norm`` are, in LoopCoder-V2, ``model.layers.i.self_attn.plt_gate.{weight,bias}`` and
``.plt_gate.gate_norm.weight`` (the loaders also accept ``loop_gate_proj`` for ``plt_gate``); in
IQuest Loop ``model.gate_projections.i.{weight,bias}``. The final norm, also the per-loop norm, is
``model.norm``. Tensors are [out, in] in both.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterator, List, Tuple

import torch

from handoff.published_config import LOOP_FAMILY, PublishedFormatError, family_of
from model.config import ModelConfig

# Published names that are not weights: a RoPE buffer some exports carry (vLLM skips it too).
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
# One-to-one per layer: our suffix -> the published suffix under model.layers.i.
LAYER_PLAIN = {
    "input_layernorm.weight": "input_layernorm.weight",
    "self_attention.linear_proj.weight": "self_attn.o_proj.weight",
    "pre_mlp_layernorm.weight": "post_attention_layernorm.weight",
    "mlp.linear_fc2.weight": "mlp.down_proj.weight",
}


def _dims(model_cfg: ModelConfig):
    heads = model_cfg.num_attention_heads
    groups = model_cfg.num_query_groups or heads
    return heads, groups, model_cfg.hidden_size // heads


def _gate_names(model_cfg: ModelConfig, layer: int) -> Dict[str, str]:
    """Our gate names -> published, for one layer of a gated model."""
    ours = f"decoder.layers.{layer}.self_attention."
    if family_of(model_cfg) == LOOP_FAMILY:
        theirs = f"model.gate_projections.{layer}."
        return {ours + "linear_gate.weight": theirs + "weight", ours + "linear_gate.bias": theirs + "bias"}
    theirs = f"model.layers.{layer}.self_attn.plt_gate."
    names = {ours + "linear_gate.weight": theirs + "weight", ours + "linear_gate.bias": theirs + "bias"}
    if model_cfg.gate_input == "hidden":
        names[ours + "gate_norm.weight"] = theirs + "gate_norm.weight"
    return names


def published_shapes(model_cfg: ModelConfig) -> Dict[str, Tuple[int, ...]]:
    """Every published tensor of `model_cfg` and its shape, in the order the export writes them."""
    heads, groups, d = _dims(model_cfg)
    h, f, v = model_cfg.hidden_size, model_cfg.ffn_hidden_size, model_cfg.vocab_size
    shapes = {"model.embed_tokens.weight": (v, h)}
    for i in range(model_cfg.num_layers):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (h,), p + "self_attn.q_proj.weight": (heads * d, h),
                       p + "self_attn.k_proj.weight": (groups * d, h),
                       p + "self_attn.v_proj.weight": (groups * d, h),
                       p + "self_attn.o_proj.weight": (h, heads * d),
                       p + "post_attention_layernorm.weight": (h,),
                       p + "mlp.gate_proj.weight": (f, h), p + "mlp.up_proj.weight": (f, h),
                       p + "mlp.down_proj.weight": (h, f)})
        if model_cfg.has_gated_loops:
            gate = dict(zip(_gate_names(model_cfg, i).values(), [
                (heads, d if model_cfg.gate_input == "query" else h), (heads,), (h,)]))
            shapes.update(gate)
    shapes["model.norm.weight"] = (h,)
    if model_cfg.untie_embeddings_and_output_weights:
        shapes["lm_head.weight"] = (v, h)
    return shapes


def split_qkv(model_cfg: ModelConfig, qkv: torch.Tensor) -> List[torch.Tensor]:
    heads, groups, d = _dims(model_cfg)
    per_group = qkv.view(groups, (heads // groups + 2) * d, -1)
    q, k, v = per_group.split([heads // groups * d, d, d], dim=1)
    return [t.reshape(-1, qkv.shape[-1]) for t in (q, k, v)]


def fuse_qkv(model_cfg: ModelConfig, q: torch.Tensor, k: torch.Tensor,
             v: torch.Tensor) -> torch.Tensor:
    heads, groups, d = _dims(model_cfg)
    hidden = q.shape[-1]
    parts = [q.view(groups, heads // groups * d, hidden), k.view(groups, d, hidden),
             v.view(groups, d, hidden)]
    return torch.cat(parts, dim=1).reshape(-1, hidden)


def to_published(model_cfg: ModelConfig, weights: Dict[str, torch.Tensor]
                 ) -> Iterator[Tuple[str, torch.Tensor]]:
    """(published name, tensor) in `published_shapes` order. Each source tensor is popped from
    `weights` as it is converted, so the caller holds at most the rest plus what it buffers."""
    def take(name):
        if name not in weights:
            raise PublishedFormatError(f"the checkpoint has no tensor {name!r} that a "
                                       f"{family_of(model_cfg)} model of this config needs")
        return weights.pop(name)

    yield "model.embed_tokens.weight", take("embedding.word_embeddings.weight")
    for i in range(model_cfg.num_layers):
        ours, theirs = f"decoder.layers.{i}.", f"model.layers.{i}."
        yield theirs + "input_layernorm.weight", take(ours + "input_layernorm.weight")
        q, k, v = split_qkv(model_cfg, take(ours + "self_attention.linear_qkv.weight"))
        yield theirs + "self_attn.q_proj.weight", q
        yield theirs + "self_attn.k_proj.weight", k
        yield theirs + "self_attn.v_proj.weight", v
        yield theirs + "self_attn.o_proj.weight", take(ours + "self_attention.linear_proj.weight")
        yield theirs + "post_attention_layernorm.weight", take(ours + "pre_mlp_layernorm.weight")
        gate, up = take(ours + "mlp.linear_fc1.weight").chunk(2, dim=0)
        yield theirs + "mlp.gate_proj.weight", gate
        yield theirs + "mlp.up_proj.weight", up
        yield theirs + "mlp.down_proj.weight", take(ours + "mlp.linear_fc2.weight")
        if model_cfg.has_gated_loops:
            for our_name, their_name in _gate_names(model_cfg, i).items():
                yield their_name, take(our_name)
    yield "model.norm.weight", take("decoder.final_layernorm.weight")
    if model_cfg.untie_embeddings_and_output_weights:
        yield "lm_head.weight", take("output_layer.weight")
    if weights:
        raise PublishedFormatError(f"the checkpoint holds tensors the {family_of(model_cfg)} "
                                   f"format has no place for: {sorted(weights)[:5]}")


def from_published(model_cfg: ModelConfig,
                   get: Callable[[str], torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Our weights of `model_cfg` from a reader of published tensors (names already verified)."""
    weights = {"embedding.word_embeddings.weight": get("model.embed_tokens.weight")}
    for i in range(model_cfg.num_layers):
        ours, theirs = f"decoder.layers.{i}.", f"model.layers.{i}."
        for our_suffix, their_suffix in LAYER_PLAIN.items():
            weights[ours + our_suffix] = get(theirs + their_suffix)
        weights[ours + "self_attention.linear_qkv.weight"] = fuse_qkv(
            model_cfg, *(get(theirs + f"self_attn.{x}_proj.weight") for x in "qkv"))
        weights[ours + "mlp.linear_fc1.weight"] = torch.cat(
            [get(theirs + "mlp.gate_proj.weight"), get(theirs + "mlp.up_proj.weight")])
        if model_cfg.has_gated_loops:
            for our_name, their_name in _gate_names(model_cfg, i).items():
                weights[our_name] = get(their_name)
    weights["decoder.final_layernorm.weight"] = get("model.norm.weight")
    if model_cfg.untie_embeddings_and_output_weights:
        weights["output_layer.weight"] = get("lm_head.weight")
    return weights


def canonical_name(name: str) -> str:
    """The published loaders' alias: ``loop_gate_proj`` for ``plt_gate``."""
    return name.replace(".self_attn.loop_gate_proj.", ".self_attn.plt_gate.")
