"""The published serving math, written from docs/spec.md alone, in float64 numpy.

    logits = reference_logits(hf_dir, tokens)      # tokens: 1-D int array, logits [S, vocab]

Reads an exported directory the way a published loader does: config.json's published keys and
the safetensors tensors by their published names (docs/spec.md#published-formats). Nothing here
comes from loopcoder's model code or handoff/hf_files: it is the independent check that an
export computes what the families' loaders compute. One sequence, no cache, no padding.
"""

import glob
import json
import os

import numpy as np
from safetensors.numpy import load_file


def _load(hf_dir):
    weights = {}
    for path in glob.glob(os.path.join(hf_dir, "*.safetensors")):
        weights.update({k: v.astype(np.float64) for k, v in load_file(path).items()})
    return weights


def _rms(x, weight, eps):  # "Notation": RMSNorm
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def _rope(x, positions, theta):
    """RoPE, rotate-half convention ("Notation"; the same absolute positions in every loop)."""
    d = x.shape[-1]
    inv_freq = 1.0 / theta ** (np.arange(0, d, 2, dtype=np.float64) / d)
    angles = np.concatenate([positions[:, None] * inv_freq] * 2, axis=-1)[:, None]  # [S, 1, d]
    rotated = np.concatenate([-x[..., d // 2:], x[..., :d // 2]], axis=-1)
    return x * np.cos(angles) + rotated * np.sin(angles)


def _attend(q, k, v, window=None):
    """Causal attention of q [S, H, d] over k, v [S, KV, d] (GQA: head h reads KV head
    h // (H / KV)); `window`: keys at most `window` positions back (the query itself included)."""
    S, H, d = q.shape
    k, v = np.repeat(k, H // k.shape[1], axis=1), np.repeat(v, H // v.shape[1], axis=1)
    i, j = np.arange(S)[:, None], np.arange(S)[None, :]
    visible = (j <= i) if window is None else (j <= i) & (i - j <= window)
    scores = np.einsum("ihd,jhd->hij", q, k) / np.sqrt(d)
    scores = np.where(visible[None], scores, -np.inf)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("hij,jhd->ihd", p, v)


def _silu(x):
    return x / (1.0 + np.exp(-x))


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


class _Family:
    """What the published config.json says about the loops ("The published formats")."""

    def __init__(self, c):
        self.type = c["model_type"]
        if self.type == "iquestloopcoder":  # IQuest-Coder-V1 Loop: no shift, no per-loop norm
            self.loops, self.shift, self.norm_per_loop = c.get("loop_num", 2), False, False
            self.window = c.get("loop_window_size", 64) - 1  # counts keys INCLUDING the query
            self.gate_from_hidden, self.a, self.b = False, 1.0, 1.0
        elif self.type == "iquestpltcoder":  # LoopCoder-V2
            self.loops, self.shift = c.get("plt_num_loops", 2), True
            self.norm_per_loop = c.get("plt_normalize_per_loop", True)
            self.window = c.get("plt_window_size", [64, 0])[0]  # flash-attn (left, 0): keys back
            self.gate_from_hidden = c.get("plt_gate_use_hidden_states", False)
            self.a = 1.0 if c.get("plt_emb_scale") is None else c["plt_emb_scale"]
            self.b = 1.0 if c.get("plt_hidden_scale") is None else c["plt_hidden_scale"]
        else:  # llama: one pass through the block
            self.loops = 1


def reference_logits(hf_dir, tokens):
    with open(os.path.join(hf_dir, "config.json")) as stream:
        c = json.load(stream)
    W, fam = _load(hf_dir), _Family(c)
    H, KV, hidden = c["num_attention_heads"], c["num_key_value_heads"], c["hidden_size"]
    d, eps = c.get("head_dim", hidden // H), c["rms_norm_eps"]
    theta = c["rope_theta"] if "rope_theta" in c else c["rope_parameters"]["rope_theta"]
    positions = np.arange(len(tokens), dtype=np.float64)
    first_kv = {}  # loop 1's K/V per layer ("shared KV")

    def layer(i, h, loop):
        """One pre-norm Llama layer; loops >= 2 use the gated two-branch attention ("Attention
        in loops r >= 2")."""
        p = f"model.layers.{i}."
        x = _rms(h, W[p + "input_layernorm.weight"], eps)
        q = (x @ W[p + "self_attn.q_proj.weight"].T).reshape(-1, H, d)
        k = (x @ W[p + "self_attn.k_proj.weight"].T).reshape(-1, KV, d)
        v = (x @ W[p + "self_attn.v_proj.weight"].T).reshape(-1, KV, d)
        q, k = _rope(q, positions, theta), _rope(k, positions, theta)
        if loop == 1:
            first_kv[i] = (k, v)
            y = _attend(q, k, v)
        else:
            y_global = _attend(q, *first_kv[i])          # over loop 1's K/V, positions <= i
            y_local = _attend(q, k, v, fam.window)       # own K/V, sliding window
            if fam.gate_from_hidden:  # g = sigmoid(W_g RMSNorm_g(x) + b_g), x = the residual
                g_ = p + "self_attn.plt_gate."
                g = _sigmoid(_rms(h, W[g_ + "gate_norm.weight"], eps) @ W[g_ + "weight"].T
                             + W[g_ + "bias"])
            else:  # per head: g_h = sigmoid(w_h . q_h + b_h), q_h after RoPE
                g_ = (f"model.gate_projections.{i}." if fam.type == "iquestloopcoder"
                      else p + "self_attn.plt_gate.")
                g = _sigmoid(np.einsum("shd,hd->sh", q, W[g_ + "weight"]) + W[g_ + "bias"])
            y = g[..., None] * y_global + (1 - g[..., None]) * y_local
        h = h + y.reshape(-1, H * d) @ W[p + "self_attn.o_proj.weight"].T
        x = _rms(h, W[p + "post_attention_layernorm.weight"], eps)
        mlp = _silu(x @ W[p + "mlp.gate_proj.weight"].T) * (x @ W[p + "mlp.up_proj.weight"].T)
        return h + mlp @ W[p + "mlp.down_proj.weight"].T

    def block(h, loop):
        for i in range(c["num_hidden_layers"]):
            h = layer(i, h, loop)
        return h

    embeddings = W["model.embed_tokens.weight"][np.asarray(tokens)]
    h = block(embeddings, 1)  # "Forward pass": h1 = f(h0)
    for loop in range(2, fam.loops + 1):
        if fam.shift:  # B = a E(x) + b shift(RMSNorm_final(h_{r-1})), shift(h)_1 = 0
            hp = _rms(h, W["model.norm.weight"], eps) if fam.norm_per_loop else h
            shifted = np.concatenate([np.zeros_like(hp[:1]), hp[:-1]])
            h = block(fam.a * embeddings + fam.b * shifted, loop)
        else:  # clp=false: B = h_{r-1}, raw
            h = block(h, loop)
    head = W["model.embed_tokens.weight" if c.get("tie_word_embeddings") else "lm_head.weight"]
    return _rms(h, W["model.norm.weight"], eps) @ head.T
