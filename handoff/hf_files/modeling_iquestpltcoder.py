"""A transformers implementation of the published LoopCoder families, written by loopcoder's export.

One model class per family, one forward for both:

- `iquestpltcoder` (LoopCoder-V2, PLT): R passes through one shared block. Loop 1 is plain causal
  attention; loop r >= 2 reads  a * E(x) + b * shift(RMSNorm_final(h_{r-1}))  (shift: position i
  gets h_{r-1} at i - 1, zeros at the first position: cross-loop parallelism), and its attention
  mixes a global branch over loop 1's K/V of the same layer with a sliding-window branch over its
  own K/V: o_proj(g * y_global + (1 - g) * y_local), one gate per head and token.
- `iquestloopcoder` (IQuest-Coder-V1 Loop): the same attention, no shift, no embedding re-added, no
  per-loop norm (loop r reads loop r-1's raw output), the gate from each head's rotated query.

The gate g = sigmoid(W RMSNorm_g(x) + b) reads the layer's input residual x (LoopCoder-V2 with
`plt_gate_use_hidden_states`), or g_h = sigmoid(w_h . q_h + b_h) with q_h head h's query after
RoPE (the IQuest Loop models; LoopCoder-V2 without that flag). The local branch sees `window` keys
back plus the query itself.

Cache (`PLTCache`, in cache_iquestpltcoder.py): loop 1's K/V for the whole sequence, per later
loop only the last window + 1 tokens' K/V, plus the last output of every loop but the last (the next token's
cross-loop input). With the shift, the R loops of a new token are independent but for loop 1's
K/V of that token, so one decode forward runs all of them as R rows of one batch; without it
(IQuest Loop) the loops of a token run one after another.

Self-contained (torch and transformers only), copied into every exported directory and loaded
with `trust_remote_code=True`. CPU and GPU, attention through torch's scaled_dot_product_attention.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .cache_iquestpltcoder import PLTCache, visible_keys
from .configuration_iquestloopcoder import IQuestLoopCoderConfig
from .configuration_iquestpltcoder import IQuestPLTCoderConfig


class LoopSettings:
    """Both families' config keys as one description of the loops."""

    def __init__(self, config):
        if config.model_type == "iquestloopcoder":
            self.num_loops, self.clp, self.normalize_per_loop = config.loop_num, False, False
            self.emb_scale = self.hidden_scale = 1.0
            self.window = config.loop_window_size - 1  # its count includes the query
            self.gate_from_query, self.gates_in_layers, self.shared_kv = True, False, True
        else:
            left, right = config.plt_window_size
            if right != 0:
                raise ValueError(f"plt_window_size={config.plt_window_size}: the local branch is "
                                 "causal, use [left, 0]")
            # plt_clp / plt_shared_kv: loopcoder's ablations (the vanilla looped transformer of
            # the PLT paper), absent from the published configs, which mean true for both.
            self.num_loops = config.plt_num_loops
            self.clp = getattr(config, "plt_clp", True)
            self.shared_kv = getattr(config, "plt_shared_kv", True)
            self.normalize_per_loop = config.plt_normalize_per_loop and self.clp
            self.emb_scale = 1.0 if config.plt_emb_scale is None else config.plt_emb_scale
            self.hidden_scale = 1.0 if config.plt_hidden_scale is None else config.plt_hidden_scale
            self.window = left
            self.gate_from_query = not config.plt_gate_use_hidden_states
            self.gates_in_layers = True


class PLTRMSNorm(nn.Module):
    def __init__(self, size, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x):
        # bf16/fp16 in float32 (as loopcoder trains it), float64 in float64 (no float32 step a
        # float64 check would see), then back to the input's dtype.
        wide = compute_dtype(x.dtype)
        return F.rms_norm(x.to(wide), (x.shape[-1],), self.weight.to(wide), self.eps).to(x.dtype)


class PLTGate(nn.Module):
    """One layer's loop >= 2 gate: [heads, hidden] + gate_norm, or [heads, head_dim] (query)."""

    def __init__(self, config, from_query):
        super().__init__()
        width = config.head_dim if from_query else config.hidden_size
        self.from_query = from_query
        self.weight = nn.Parameter(torch.zeros(config.num_attention_heads, width))
        self.bias = nn.Parameter(torch.zeros(config.num_attention_heads))
        if not from_query:
            self.gate_norm = PLTRMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, residual, query):
        """g [rows, heads, s, 1] from the residual [rows, s, hidden] or query [rows, heads, s, d]."""
        if self.from_query:
            logits = torch.einsum("nhsd,hd->nhs", query, self.weight.to(query.dtype)) + self.bias[:, None]
        else:
            logits = F.linear(self.gate_norm(residual), self.weight, self.bias).transpose(1, 2)
        return torch.sigmoid(logits).unsqueeze(-1)


def compute_dtype(dtype):
    """The dtype of norms and RoPE angles: float32 at least, the model's own when it is wider."""
    return torch.promote_types(dtype, torch.float32)


def rotate_half(x):
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


class PLTAttention(nn.Module):
    def __init__(self, config, layer_index, settings):
        super().__init__()
        self.layer_index, self.settings = layer_index, settings
        self.heads, self.kv_heads, self.head_dim = (config.num_attention_heads,
                                                    config.num_key_value_heads, config.head_dim)
        self.q_proj = nn.Linear(config.hidden_size, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, config.hidden_size, bias=False)
        if settings.gates_in_layers and settings.num_loops > 1 and settings.shared_kv:
            self.plt_gate = PLTGate(config, settings.gate_from_query)

    def _attend(self, q, k, v, mask):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None], enable_gqa=True)

    def forward(self, x, residual, cos, sin, loops, cache, query_pos, gate):
        """x (normed) and residual [L*b, s, hidden], rows loop-major for the loops in `loops`."""
        n, s, _ = x.shape
        L = len(loops)
        b = n // L
        q = self.q_proj(x).view(n, s, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(n, s, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(n, s, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        if not self.settings.shared_kv:  # every loop plain causal attention over its own K/V
            mask, outputs = visible_keys(cache.full_pos, query_pos), []
            for j, loop in enumerate(loops):
                rows = slice(j * b, (j + 1) * b)
                keys, values = cache.write_full(self.layer_index, loop, k[rows], v[rows])
                outputs.append(self._attend(q[rows], keys, values, mask))
            y = torch.cat(outputs)
            return self.o_proj(y.transpose(1, 2).reshape(n, s, self.heads * self.head_dim))
        if loops[0] == 0:
            cache.write_full(self.layer_index, 0, k[:b], v[:b])
        keys, values = cache.full_k[self.layer_index, 0], cache.full_v[self.layer_index, 0]
        # Every loop's queries over loop 1's keys: one call, the loops side by side per sequence.
        per_sequence = q.view(L, b, self.heads, s, self.head_dim).permute(1, 2, 0, 3, 4)
        mask = visible_keys(cache.full_pos, query_pos.repeat(1, L))
        y = self._attend(per_sequence.reshape(b, self.heads, L * s, self.head_dim), keys, values,
                         mask)
        y = y.view(b, self.heads, L, s, self.head_dim).permute(2, 0, 1, 3, 4).reshape(q.shape)
        later = [loop for loop in loops if loop > 0]
        if later:
            rows = slice(n - len(later) * b, n)
            shape = (len(later), b, self.kv_heads, s, self.head_dim)
            ring_k, ring_v = cache.write_rings(self.layer_index, later, k[rows].view(shape),
                                               v[rows].view(shape))
            ring_pos = cache.ring_pos[:, -ring_k.shape[3]:]
            local_mask = visible_keys(ring_pos, query_pos, self.settings.window).repeat(len(later), 1, 1)
            y_local = self._attend(q[rows], ring_k.flatten(0, 1), ring_v.flatten(0, 1), local_mask)
            g = gate(residual[rows], q[rows])
            y = torch.cat([y[:rows.start], g * y[rows] + (1 - g) * y_local])
        return self.o_proj(y.transpose(1, 2).reshape(n, s, self.heads * self.head_dim))


class PLTMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class PLTDecoderLayer(nn.Module):
    def __init__(self, config, layer_index, settings):
        super().__init__()
        self.input_layernorm = PLTRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = PLTAttention(config, layer_index, settings)
        self.post_attention_layernorm = PLTRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = PLTMLP(config)

    def forward(self, hidden, cos, sin, loops, cache, query_pos, gate):
        hidden = hidden + self.self_attn(self.input_layernorm(hidden), hidden, cos, sin, loops,
                                         cache, query_pos, gate)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


def _check_supported(config):
    if config.hidden_act != "silu" or config.attention_bias or config.mlp_bias:
        raise ValueError(f"hidden_act={config.hidden_act!r}, attention_bias={config.attention_bias}, "
                         f"mlp_bias={config.mlp_bias}: this implementation is SwiGLU without biases")


class PLTPreTrainedModel(PreTrainedModel):
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    _no_split_modules = ["PLTDecoderLayer"]
    _supports_sdpa = True

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the model makes its own PLTCache

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, PLTRMSNorm):
            nn.init.ones_(module.weight)
        elif isinstance(module, PLTGate):  # g = 0.5 at initialisation (loopcoder's docs/spec.md#gate)
            nn.init.zeros_(module.weight)
            nn.init.zeros_(module.bias)


class PLTModel(PLTPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        _check_supported(config)
        self.settings = LoopSettings(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(PLTDecoderLayer(config, i, self.settings)
                                    for i in range(config.num_hidden_layers))
        if not self.settings.gates_in_layers and self.settings.num_loops > 1:  # IQuest Loop
            self.gate_projections = nn.ModuleList(PLTGate(config, True)
                                                  for _ in range(config.num_hidden_layers))
        self.norm = PLTRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def _gate(self, layer_index):
        if not self.settings.gates_in_layers:
            return self.gate_projections[layer_index]
        return self.layers[layer_index].self_attn.plt_gate

    def _rope(self, positions, dtype):
        """cos, sin [b, 1, s, head_dim] (rotate-half convention; angles in float32, or float64 for
        a float64 model). Computed per call rather than kept in a buffer: nothing to re-create
        after a meta-device load."""
        dim, wide = self.config.head_dim, compute_dtype(dtype)
        inv_freq = 1.0 / (float(self.config.rope_theta) ** (
            torch.arange(0, dim, 2, dtype=wide, device=positions.device) / dim))
        freqs = positions.clamp(min=0).to(wide)[..., None] * inv_freq
        emb = torch.cat([freqs, freqs], dim=-1)[:, None]  # [b, 1, s, d]
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def _block(self, hidden, cos, sin, loops, cache, query_pos):
        rows = len(loops)
        cos, sin = cos.repeat(rows, 1, 1, 1), sin.repeat(rows, 1, 1, 1)
        for index, layer in enumerate(self.layers):
            gate = self._gate(index) if loops[-1] > 0 and self.settings.shared_kv else None
            hidden = layer(hidden, cos, sin, loops, cache, query_pos, gate)
        return hidden

    def _transition(self, hidden, valid, saved):
        """shift(RMSNorm_final(h)) over the new tokens: position i reads i - 1, the first new
        token the saved output of the previous token (zeros at the start or after padding)."""
        settings = self.settings
        previous = hidden.new_zeros(hidden.shape[0], 1, hidden.shape[2]) if saved is None else (
            saved[:, None])
        shifted = torch.cat([previous, hidden[:, :-1]], dim=1)
        shifted = self.norm(shifted) if settings.normalize_per_loop else shifted
        keep = torch.cat([valid.new_ones(valid.shape[0], 1) if saved is not None
                          else valid.new_zeros(valid.shape[0], 1), valid[:, :-1]], dim=1)
        return shifted * keep[..., None].to(shifted.dtype)

    def forward(self, input_ids, valid, positions, cache):
        """The R loops over the new tokens; returns the last loop's output (before the norm)."""
        settings, embeddings = self.settings, self.embed_tokens(input_ids)
        query_pos = torch.where(valid, positions, torch.full_like(positions, -1))
        had_past = cache.get_seq_length() > 0
        cache.add_positions(query_pos)
        cos, sin = self._rope(positions, embeddings.dtype)
        saved = cache.saved_hidden if had_past else None
        b, s = input_ids.shape
        if settings.clp and had_past and s == 1 and settings.num_loops > 1:
            # Cross-loop parallelism: all loops of the new token in one forward of R*b rows.
            rows = [embeddings] + [settings.emb_scale * embeddings + settings.hidden_scale
                                   * self._transition(embeddings[:, :0], valid, saved[r])
                                   for r in range(settings.num_loops - 1)]
            out = self._block(torch.cat(rows), cos, sin, list(range(settings.num_loops)), cache,
                              query_pos).view(settings.num_loops, b, s, -1)
            outputs = list(out)
        else:
            outputs, hidden = [], embeddings
            for loop in range(settings.num_loops):
                if loop > 0 and settings.clp:
                    hidden = settings.emb_scale * embeddings + settings.hidden_scale * \
                        self._transition(outputs[-1], valid, None if saved is None else saved[loop - 1])
                hidden = self._block(hidden, cos, sin, [loop], cache, query_pos)
                outputs.append(hidden)
        if settings.num_loops > 1:
            cache.saved_hidden = torch.stack([h[:, -1] for h in outputs[:-1]])
        cache.trim_rings()
        return outputs[-1]


class PLTForCausalLM(PLTPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config):
        super().__init__(config)
        self.model = PLTModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None,
                past_key_values=None, inputs_embeds=None, labels=None, use_cache=None,
                logits_to_keep=0, **kwargs):
        if inputs_embeds is not None or input_ids is None:
            raise ValueError("pass input_ids: the loops re-add the token embeddings, so "
                             "inputs_embeds cannot stand in for them")
        cache = cache if cache is not None else past_key_values
        use_cache = self.config.use_cache if use_cache is None else use_cache
        settings = self.model.settings
        if cache is None:  # without use_cache a throwaway one holds this forward's K/V
            cache = PLTCache(self.config.num_hidden_layers, settings.num_loops, settings.window)
        b, s = input_ids.shape
        past = cache.get_seq_length()
        if attention_mask is None:
            attention_mask = torch.ones(b, past + s, dtype=torch.long, device=input_ids.device)
        valid = attention_mask[:, -s:].bool()
        if position_ids is None:
            position_ids = (attention_mask.long().cumsum(-1) - 1)[:, -s:]
        hidden = self.model(input_ids, valid, position_ids, cache)
        keep = slice(-logits_to_keep, None) if logits_to_keep else slice(None)
        logits = self.lm_head(self.model.norm(hidden[:, keep]))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                   ignore_index=-100)
        fields = CausalLMOutputWithPast.__dataclass_fields__
        key = "cache" if "cache" in fields else "past_key_values"
        return CausalLMOutputWithPast(loss=loss, logits=logits,
                                      **{key: cache if use_cache else None})


class IQuestPLTCoderForCausalLM(PLTForCausalLM):
    config_class = IQuestPLTCoderConfig


class IQuestLoopCoderForCausalLM(PLTForCausalLM):
    config_class = IQuestLoopCoderConfig


__all__ = ["IQuestPLTCoderForCausalLM", "IQuestLoopCoderForCausalLM", "PLTCache"]
