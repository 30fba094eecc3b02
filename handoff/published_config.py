"""The published config.json of both LoopCoder families <-> our ModelConfig (docs/spec.md#published-formats;
the keys are the authors', never ours: docs/architecture.md#contracts).

    published_config(model_cfg, dtype="bfloat16", bos_id=1, eos_id=2) -> dict   (config.json)
    model_config_from_published(config, source) -> ModelConfig

Which family a model exports as follows from what it is: with one loop it is a plain Llama-style
decoder and exports as the architecture transformers, vLLM and SGLang ship (`llama`,
LlamaForCausalLM: no loop keys, no remote code); with the cross-loop shift (clp) it is
LoopCoder-V2 (`iquestpltcoder`); without it, with shared K/V and the query gate, it is
IQuest-Coder-V1 Loop (`iquestloopcoder`). Our ablations that neither family has (clp=false with
the hidden gate, shared_kv=false) export as LoopCoder-V2 plus two keys of ours (`extension_keys`).
Every setting of an R=1 model is one Llama has: RoPE is Llama's default (rotate-half, the same
inverse frequencies, `rope_theta`), the norms are RMSNorm with `rms_norm_eps`, embeddings tied or
not (`tie_word_embeddings`), no biases, no QK-norm, head_dim = hidden / heads; the loop fields
(clp, scales, window, gate) do nothing at R=1.

Windows: our `swa_window` counts keys back from the query, which itself is always seen.
LoopCoder-V2's `plt_window_size [left, 0]` is flash-attn's (left, right): left = swa_window.
IQuest Loop's `loop_window_size` counts keys INCLUDING the query (its transformers cache keeps that
many entries, vLLM passes it as its sliding window): loop_window_size = swa_window + 1.
"""

from __future__ import annotations

import dataclasses

from handoff.published_values import value_problem
from model.config import ModelConfig, require
from pretrain.errors import CheckpointError

PLT_FAMILY, LOOP_FAMILY, LLAMA_FAMILY = "iquestpltcoder", "iquestloopcoder", "llama"
FAMILIES = (PLT_FAMILY, LOOP_FAMILY, LLAMA_FAMILY)
ARCHITECTURES = {PLT_FAMILY: "IQuestPLTCoderForCausalLM", LOOP_FAMILY: "IQuestLoopCoderForCausalLM",
                 LLAMA_FAMILY: "LlamaForCausalLM"}
# auto_map: the configuration and modeling files that the export copies into the directory (a
# Llama needs none: transformers, vLLM and SGLang ship that architecture).
AUTO_MAP = {
    PLT_FAMILY: {"AutoConfig": "configuration_iquestpltcoder.IQuestPLTCoderConfig",
                 "AutoModelForCausalLM": "modeling_iquestpltcoder.IQuestPLTCoderForCausalLM"},
    LOOP_FAMILY: {"AutoConfig": "configuration_iquestloopcoder.IQuestLoopCoderConfig",
                  "AutoModelForCausalLM": "modeling_iquestpltcoder.IQuestLoopCoderForCausalLM"},
}
# What the published configuration classes assume for a key a config.json leaves out.
PLT_DEFAULTS = dict(plt_num_loops=2, plt_window_size=[64, 0], plt_normalize_per_loop=True,
                    plt_emb_scale=None, plt_hidden_scale=None, plt_gate_use_hidden_states=False)
LOOP_DEFAULTS = dict(loop_num=2, loop_window_size=64)
SHAPE_DEFAULTS = dict(hidden_act="silu", rms_norm_eps=1e-5, rope_theta=500000.0, rope_scaling=None,
                      tie_word_embeddings=False, attention_bias=False, mlp_bias=False)
# transformers' LlamaConfig defaults where they differ (a Llama config.json may leave them out).
LLAMA_DEFAULTS = dict(SHAPE_DEFAULTS, rms_norm_eps=1e-6, rope_theta=10000.0)


class PublishedFormatError(CheckpointError, ValueError):
    """A model or a directory the published formats cannot carry; the message names the fix. A
    checkpoint error to the user (exit 4, pretrain/errors.py), and a ValueError as before."""


def family_of(model_cfg: ModelConfig) -> str:
    if model_cfg.num_loops == 1:
        return LLAMA_FAMILY
    if (model_cfg.num_loops > 1 and not model_cfg.clp and model_cfg.shared_kv
            and model_cfg.gate_input == "query"):
        return LOOP_FAMILY
    return PLT_FAMILY


def extension_keys(model_cfg: ModelConfig) -> dict:
    """loopcoder's ablations that neither published family has (clp=false with the hidden gate,
    shared_kv=false: the PLT paper's controls), as two extra LoopCoder-V2 keys. Only our
    transformers implementation reads them; the published loaders (vLLM, SGLang) ignore them:
    they cannot load shared_kv=false (no gate tensors) and would run clp=false with the shift it
    never had (handoff/loaders.py: the export refuses that unless asked, and says so)."""
    if model_cfg.num_loops == 1 or family_of(model_cfg) == LOOP_FAMILY:
        return {}
    keys = {}
    if not model_cfg.clp:
        keys["plt_clp"] = False
    if not model_cfg.shared_kv:
        keys["plt_shared_kv"] = False
    return keys


def published_config(model_cfg: ModelConfig, dtype: str = "bfloat16", bos_id: int = 1,
                     eos_id: int = 2) -> dict:
    """config.json for `model_cfg` in its family's published keys, with our auto_map (none for
    Llama).
    Refuses (ConfigError) the neutralized CLP arm, clp_offset=0: no family has it and neither the
    published loaders nor our transformers code would compute it (they would run the offset)."""
    require(model_cfg.num_loops == 1 or not model_cfg.clp or model_cfg.clp_offset == 1,
            "model.clp_offset=0 (the neutralized CLP arm of the loop-count ablation, "
            "docs/spec.md#ablations) has no Hugging Face format: every LoopCoder-V2 loader, "
            "ours included, runs the one-position offset, so an export would compute another "
            "model. Evaluate it in loopcoder (scripts/evaluate.py, scripts/generate.py "
            "--mode sequential); export the clp_offset=1 or clp=false arms")
    family = family_of(model_cfg)
    config = {
        "architectures": [ARCHITECTURES[family]],
        "model_type": family,
        "vocab_size": model_cfg.vocab_size,
        "hidden_size": model_cfg.hidden_size,
        "intermediate_size": model_cfg.ffn_hidden_size,
        "num_hidden_layers": model_cfg.num_layers,
        "num_attention_heads": model_cfg.num_attention_heads,
        "num_key_value_heads": model_cfg.num_query_groups or model_cfg.num_attention_heads,
        "head_dim": model_cfg.hidden_size // model_cfg.num_attention_heads,
        "hidden_act": "silu",
        "max_position_embeddings": model_cfg.max_position_embeddings,
        "initializer_range": model_cfg.init_method_std,
        "rms_norm_eps": model_cfg.norm_epsilon,
        "rope_theta": model_cfg.rotary_base,
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": not model_cfg.untie_embeddings_and_output_weights,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "use_cache": True,
        "dtype": dtype,
    }
    if family in AUTO_MAP:
        config["auto_map"] = AUTO_MAP[family]
    if family == PLT_FAMILY:
        config.update(
            plt_num_loops=model_cfg.num_loops, plt_emb_scale=model_cfg.clp_emb_scale,
            plt_hidden_scale=model_cfg.clp_hidden_scale,
            plt_normalize_per_loop=model_cfg.normalize_per_loop,
            plt_gate_use_hidden_states=model_cfg.gate_input == "hidden",
            plt_window_size=[model_cfg.swa_window, 0], **extension_keys(model_cfg))
    elif family == LOOP_FAMILY:
        config.update(loop_num=model_cfg.num_loops, loop_window_size=model_cfg.swa_window + 1)
    return config


def _fail(source: str, message: str):
    raise PublishedFormatError(f"{source}: {message}")


def model_config_from_published(config: dict, source: str = "config.json") -> ModelConfig:
    """Our ModelConfig of a published config.json (either family); `source` names the file in
    every error. Refuses what our model cannot be: unknown model_type, biases, another activation,
    RoPE scaling, a head_dim other than hidden/heads, a non-causal window."""
    family = config.get("model_type")
    if family not in FAMILIES:
        _fail(source, f"model_type={family!r} is not an architecture loopcoder reads: "
                      f"{PLT_FAMILY!r} (LoopCoder-V2), {LOOP_FAMILY!r} (IQuest-Coder-V1 Loop) or "
                      f"{LLAMA_FAMILY!r} (a plain decoder: our R=1 model, or the block of an "
                      "R>1 one)")
    problem = value_problem(config)  # types and ranges first: nothing below may crash on them
    if problem:
        _fail(source, f"{problem}; fix that field of config.json")
    defaults = LLAMA_DEFAULTS if family == LLAMA_FAMILY else SHAPE_DEFAULTS
    get = lambda key: config.get(key, defaults.get(key))  # noqa: E731
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "vocab_size"):
        if not isinstance(config.get(key), int):
            _fail(source, f"{key}={config.get(key)!r}; it must be an integer")
    if get("hidden_act") != "silu" or get("attention_bias") or get("mlp_bias"):
        _fail(source, f"hidden_act={get('hidden_act')!r}, attention_bias={get('attention_bias')}, "
                      f"mlp_bias={get('mlp_bias')}: the LoopCoder block is SwiGLU (silu) without "
                      "biases")
    rope_theta = _plain_rope_theta(config, source, defaults["rope_theta"])
    heads, hidden = config["num_attention_heads"], config["hidden_size"]
    head_dim = config.get("head_dim") or hidden // heads  # null: the published default
    if head_dim * heads != hidden:
        _fail(source, f"head_dim={head_dim} x num_attention_heads={heads} != hidden_size={hidden}; "
                      "loopcoder's attention has head_dim = hidden_size / num_attention_heads")
    fields = dict(
        name=f"hf_{family}", num_layers=config["num_hidden_layers"], hidden_size=hidden,
        num_attention_heads=heads, num_query_groups=config.get("num_key_value_heads", heads),
        ffn_hidden_size=config["intermediate_size"], vocab_size=config["vocab_size"],
        max_position_embeddings=config.get("max_position_embeddings", 8192),
        norm_epsilon=float(get("rms_norm_eps")), rotary_base=rope_theta,
        untie_embeddings_and_output_weights=not get("tie_word_embeddings"),
        init_method_std=float(config.get("initializer_range", 0.02)), attention_backend="auto")
    if family == PLT_FAMILY:
        plt = {key: config.get(key, default) for key, default in PLT_DEFAULTS.items()}
        window = plt["plt_window_size"]
        if not (isinstance(window, (list, tuple)) and len(window) == 2 and window[1] == 0
                and isinstance(window[0], int) and window[0] >= 1):
            _fail(source, f"plt_window_size={window!r}; the local branch is causal: [left, 0] with "
                          "left >= 1")
        fields.update(num_loops=plt["plt_num_loops"], clp=bool(config.get("plt_clp", True)),
                      shared_kv=bool(config.get("plt_shared_kv", True)),
                      clp_emb_scale=_scale(plt["plt_emb_scale"]),
                      clp_hidden_scale=_scale(plt["plt_hidden_scale"]),
                      normalize_per_loop=bool(plt["plt_normalize_per_loop"]),
                      gate_input="hidden" if plt["plt_gate_use_hidden_states"] else "query",
                      swa_window=window[0])
    elif family == LOOP_FAMILY:
        loop = {key: config.get(key, default) for key, default in LOOP_DEFAULTS.items()}
        if not isinstance(loop["loop_window_size"], int) or loop["loop_window_size"] < 2:
            _fail(source, f"loop_window_size={loop['loop_window_size']!r}; it counts the keys "
                          "including the query and must be >= 2")
        fields.update(num_loops=loop["loop_num"], clp=False, normalize_per_loop=False, shared_kv=True,
                      gate_input="query", swa_window=loop["loop_window_size"] - 1)
    else:  # Llama: one pass, no loop settings (handoff.read gives it loops as a block)
        fields.update(num_loops=1)
    model_cfg = ModelConfig(**fields)
    try:
        model_cfg.validate()
    except ValueError as error:
        _fail(source, f"describes a model loopcoder cannot build: {error}")
    return model_cfg


def _plain_rope_theta(config: dict, source: str, default: float) -> float:
    """rope_theta of plain RoPE, from the legacy keys (rope_theta, rope_scaling: null) or
    transformers 5's `rope_parameters` ({"rope_type": "default", "rope_theta": ...})."""
    for key in ("rope_scaling", "rope_parameters"):
        rope = config.get(key)
        if rope is None:
            continue
        kind = rope.get("rope_type", rope.get("type")) if isinstance(rope, dict) else rope
        if kind != "default" or any(k not in ("rope_type", "type", "rope_theta") for k in rope):
            _fail(source, f"{key}={rope!r}: loopcoder trains plain RoPE; set {key} to null "
                          "(or rope_type 'default')")
        if "rope_theta" in rope:
            return float(rope["rope_theta"])
    return float(config.get("rope_theta", default))


def _scale(value) -> float:
    return 1.0 if value is None else float(value)


def same_architecture(a: ModelConfig, b: ModelConfig) -> bool:
    """Equal on every field but the run-only ones (name, attention backend, recompute, chunked
    cross-entropy, fused elementwise kernels)."""
    skip = {"name", "attention_backend", "recompute", "chunked_cross_entropy", "fused_elementwise"}
    return all(getattr(a, f.name) == getattr(b, f.name) for f in dataclasses.fields(a)
               if f.name not in skip)
