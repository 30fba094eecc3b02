"""LoopCoder-V2 (`model_type: iquestpltcoder`) configuration, written by loopcoder's export.

The keys and their meanings are the ones the LoopCoder-V2 authors published (their config.json and
the vLLM/SGLang loaders that serve it): Llama-style shape keys plus

    plt_num_loops               R, the passes through the shared block
    plt_emb_scale / plt_hidden_scale   a and b of the cross-loop input a * E(x) + b * shift(h)
                                (None means 1.0)
    plt_normalize_per_loop      the final norm also applied between loops
    plt_gate_use_hidden_states  the loop >= 2 gate reads RMSNorm(residual) (True) or each head's
                                rotated query (False)
    plt_window_size             [left, right] of the loop >= 2 local branch, flash-attn's convention:
                                [64, 0] = 64 keys back plus the query itself

The defaults are the published class's, so that a config.json leaving a key out means the same
model here as there (the export writes every key). This file is self-contained (it imports
transformers only): it is copied into every exported directory and loaded from there with
`trust_remote_code=True`.
"""

from transformers import PretrainedConfig

# The Llama-style keys both published families share, with their published meanings.
LLAMA_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act",
              "max_position_embeddings", "initializer_range", "rms_norm_eps", "use_cache",
              "rope_theta", "attention_bias", "attention_dropout", "mlp_bias")


def set_llama_keys(config, values: dict) -> None:
    """Set the shared keys from a config class's __init__ arguments (its locals())."""
    if values["rope_scaling"] is not None:
        raise ValueError(f"rope_scaling={values['rope_scaling']!r}: this implementation has plain "
                         "RoPE only; set rope_scaling to null in config.json")
    for key in LLAMA_KEYS:
        setattr(config, key, values[key])


class IQuestPLTCoderConfig(PretrainedConfig):
    model_type = "iquestpltcoder"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]

    def __init__(self, vocab_size=75904, hidden_size=5120, intermediate_size=27648,
                 num_hidden_layers=14, num_attention_heads=40, num_key_value_heads=8, head_dim=128,
                 hidden_act="silu", max_position_embeddings=131072, initializer_range=0.02,
                 rms_norm_eps=1e-5, use_cache=True, pad_token_id=None, bos_token_id=1,
                 eos_token_id=None, tie_word_embeddings=False, rope_theta=500000.0,
                 rope_scaling=None, attention_bias=False, attention_dropout=0.0, mlp_bias=False,
                 plt_num_loops=2, plt_window_size=None, plt_normalize_per_loop=True,
                 plt_emb_scale=None, plt_hidden_scale=None, plt_gate_use_hidden_states=False,
                 **kwargs):
        set_llama_keys(self, locals())
        if eos_token_id is None:
            eos_token_id = [2, 75864, 75869]
        self.plt_num_loops = plt_num_loops
        self.plt_window_size = list(plt_window_size) if plt_window_size is not None else [64, 0]
        self.plt_normalize_per_loop = plt_normalize_per_loop
        self.plt_emb_scale = plt_emb_scale
        self.plt_hidden_scale = plt_hidden_scale
        self.plt_gate_use_hidden_states = plt_gate_use_hidden_states
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id,
                         eos_token_id=eos_token_id, tie_word_embeddings=tie_word_embeddings,
                         **kwargs)


__all__ = ["IQuestPLTCoderConfig"]
