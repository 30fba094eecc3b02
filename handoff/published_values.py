"""The type and range of every config.json field the reader maps to our ModelConfig.

    problem = value_problem(config)    # None, or "rms_norm_eps=-1; it must be a number > 0 ..."

A config.json from the internet is the user's input: `"hidden_size": "big"` must be refused by
name, not crash in int(); `rms_norm_eps <= 0` or `rope_theta <= 0` would train NaN from the first
step; a size of 0 or a head count that does not divide the width cannot be built. The messages use
the published keys (what the user sees in the file), not our ModelConfig names.
published_config.model_config_from_published calls this first and names the file.
"""

from __future__ import annotations

import math
from typing import Optional

# Required: the published configuration classes have no default for these.
REQUIRED_SIZES = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                  "num_attention_heads")
# Optional sizes (absent -> the family's default); null allowed where the published code means
# "same as the heads" / "hidden_size / heads".
OPTIONAL_SIZES = {"num_key_value_heads": True, "head_dim": True, "max_position_embeddings": False,
                  "plt_num_loops": False, "loop_num": False}
POSITIVE_NUMBERS = ("rms_norm_eps", "rope_theta")
FLAGS = ("tie_word_embeddings", "attention_bias", "mlp_bias", "plt_normalize_per_loop",
         "plt_gate_use_hidden_states", "plt_clp", "plt_shared_kv")
OPTIONAL_SCALES = ("plt_emb_scale", "plt_hidden_scale")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _types_problem(config: dict) -> Optional[str]:
    for key in REQUIRED_SIZES:
        if not (_is_int(config.get(key)) and config[key] >= 1):
            return f"{key}={config.get(key)!r}; it must be an integer >= 1"
    for key, nullable in OPTIONAL_SIZES.items():
        value = config.get(key)
        if key in config and not (_is_int(value) and value >= 1) and not (nullable and value is None):
            return f"{key}={value!r}; it must be an integer >= 1{' or null' if nullable else ''}"
    for key in POSITIVE_NUMBERS:
        if key in config and not (_is_number(config[key]) and config[key] > 0):
            return (f"{key}={config[key]!r}; it must be a finite number > 0 (0 or less makes "
                    "the model NaN from its first step)")
    if "initializer_range" in config and not (_is_number(config["initializer_range"])
                                              and config["initializer_range"] >= 0):
        return f"initializer_range={config['initializer_range']!r}; it must be a number >= 0"
    for key in FLAGS:
        if key in config and not isinstance(config[key], bool):
            return f"{key}={config[key]!r}; it must be true or false"
    for key in OPTIONAL_SCALES:
        if config.get(key) is not None and not _is_number(config[key]):
            return f"{key}={config[key]!r}; it must be a finite number or null"
    window = config.get("plt_window_size")
    if window is not None and not (isinstance(window, list) and all(map(_is_int, window))):
        return f"plt_window_size={window!r}; it must be a list of two integers [left, 0]"
    if "loop_window_size" in config and not _is_int(config["loop_window_size"]):
        return f"loop_window_size={config['loop_window_size']!r}; it must be an integer >= 2"
    if "hidden_act" in config and not isinstance(config["hidden_act"], str):
        return f"hidden_act={config['hidden_act']!r}; it must be a string (\"silu\")"
    return None


def value_problem(config: dict) -> Optional[str]:
    """The first field of `config` (a parsed config.json object) of the wrong type or range, as
    "key=value; what it must be", or None when every field the reader uses is usable."""
    problem = _types_problem(config)
    if problem:
        return problem
    heads, hidden = config["num_attention_heads"], config["hidden_size"]
    kv_heads = config.get("num_key_value_heads") or heads
    if hidden % heads:
        return f"num_attention_heads={heads} does not divide hidden_size={hidden}"
    if heads % kv_heads:
        return (f"num_key_value_heads={kv_heads} does not divide num_attention_heads={heads} "
                "(each key/value head serves a whole group of query heads)")
    return None
