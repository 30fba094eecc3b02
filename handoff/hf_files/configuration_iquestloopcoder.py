"""IQuest-Coder-V1 Loop (`model_type: iquestloopcoder`) configuration, written by loopcoder's export.

The published keys: Llama-style shape keys plus `loop_num` (R) and `loop_window_size`, the number
of keys the loop >= 2 local branch sees INCLUDING the query (the published cache keeps that many
entries; vLLM passes it as its sliding window): 64 = 63 keys back plus the query. This family has no
cross-loop shift and no per-loop norm (loop r reads loop r-1's raw output) and its gate reads each
head's rotated query (`model.gate_projections.<i>` [heads, head_dim]).

Self-contained (transformers and its sibling configuration_iquestpltcoder.py): copied into every
exported directory.
"""

from transformers import PretrainedConfig

from .configuration_iquestpltcoder import set_llama_keys


class IQuestLoopCoderConfig(PretrainedConfig):
    model_type = "iquestloopcoder"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]

    def __init__(self, vocab_size=76800, hidden_size=5120, intermediate_size=27648,
                 num_hidden_layers=80, num_attention_heads=40, num_key_value_heads=8, head_dim=128,
                 hidden_act="silu", max_position_embeddings=8192, initializer_range=0.02,
                 rms_norm_eps=1e-5, use_cache=True, pad_token_id=None, bos_token_id=1,
                 eos_token_id=2, tie_word_embeddings=False, rope_theta=500000.0,
                 rope_scaling=None, attention_bias=False, attention_dropout=0.0, mlp_bias=False,
                 loop_num=2, loop_window_size=64, **kwargs):
        set_llama_keys(self, locals())
        self.loop_num = loop_num
        self.loop_window_size = loop_window_size
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id,
                         eos_token_id=eos_token_id, tie_word_embeddings=tie_word_embeddings,
                         **kwargs)


__all__ = ["IQuestLoopCoderConfig"]
