"""The PLT model's configuration.

Two dataclasses with one set of field names:

- ``ModelConfig``: the ``model.*`` node of the Hydra schema (plain types only, so YAML presets in
  ``conf/model/`` fill and validate it). It describes the architecture and nothing about the run.
- ``PLTConfig``: megatron-core's ``TransformerConfig`` plus the PLT fields. Built from a
  ``ModelConfig`` and the run's parallel layout and precision by ``ModelConfig.build``; this is what
  the model modules receive.

The architecture is the LoopCoder-v2 one (docs/spec.md#notation): Llama-style pre-norm
blocks with RMSNorm, SwiGLU, RoPE, GQA and no biases. Those choices are fixed here, not options.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from megatron.core.transformer import TransformerConfig

from model.kernels import ATTENTION_BACKENDS
from model.pipeline import virtual_pipeline_size

GATE_INPUTS = ("hidden", "query")


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the field and the fix."""


def require(condition: bool, message: str, error: type = ConfigError) -> None:
    """Raise ``error(message)`` unless ``condition``: every config check of the project reads as
    a list of ``require(ok, "what is wrong and the fix")`` lines."""
    if not condition:
        raise error(message)


@dataclass
class PLTFields:
    """What PLT adds to megatron's TransformerConfig (docs/spec.md#forward-pass,
    docs/spec.md#attention), and the model-shape arguments megatron passes to GPTModel instead. One declaration
    for both dataclasses below."""

    num_loops: int = 2
    clp: bool = True
    clp_emb_scale: float = 1.0
    clp_hidden_scale: float = 1.0
    normalize_per_loop: bool = True
    shared_kv: bool = True
    swa_window: int = 64
    # What the loop >= 2 gate reads (model/attention.py): "hidden" = RMSNorm_g of the layer's
    # input residual (LoopCoder-V2, docs/spec.md#gate), "query" = each head's rotated query (the published
    # IQuest-Coder-V1 Loop models; LoopCoder-V2's plt_gate_use_hidden_states=false).
    gate_input: str = "hidden"
    # One of model/kernels.py ATTENTION_BACKENDS. In PLTConfig it replaces megatron's AttnBackend
    # enum field of the same name: PLT brings its own core attention, megatron's selection never
    # applies.
    attention_backend: str = "auto"
    # The output head and its loss in chunks of tokens, never holding the full fp32 logits
    # (model/chunked_cross_entropy.py): the same loss and gradients, ~2.5 GB less at vocab 76,800
    # x 8192 tokens, one more head matmul. parallel.tp=1 only.
    chunked_cross_entropy: bool = False
    # RMSNorm and RoPE as torch.compile'd kernels and megatron's fused SwiGLU
    # (model/fused_elementwise.py): the same math, fewer kernels and saved activations; compiles
    # on the first step (inductor: Triton on CUDA, a C compiler on CPU).
    fused_elementwise: bool = False
    vocab_size: int = 4096
    max_position_embeddings: int = 2048
    rotary_base: float = 10000.0
    untie_embeddings_and_output_weights: bool = True

    @property
    def has_gated_loops(self) -> bool:
        """Whether loops >= 2 use the gated two-branch attention (and so the layer has a gate)."""
        return self.num_loops > 1 and self.shared_kv


# The fields that change what a model's weights compute (checked when a run resumes from a
# checkpoint). STRUCTURAL ones also decide which weights exist and their shapes: they must match.
# CHANGEABLE ones may be changed on purpose (checkpoint.allow_model_change). The rest do not change
# the function: name, attention_backend (the kernel, same math), recompute (memory),
# chunked_cross_entropy (the head's loss in chunks, same math), fused_elementwise (the norm, RoPE
# and SwiGLU as fused kernels, same math),
# init_method_std (only a fresh start uses it), max_position_embeddings (RoPE is computed for the
# positions used).
STRUCTURAL_FIELDS = ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups",
                     "ffn_hidden_size", "vocab_size", "untie_embeddings_and_output_weights",
                     "shared_kv", "gate_input")
CHANGEABLE_FIELDS = ("num_loops", "clp", "clp_emb_scale", "clp_hidden_scale", "normalize_per_loop",
                     "swa_window", "rotary_base", "norm_epsilon")


@dataclass
class ModelConfig(PLTFields):
    """The ``model`` group of the run config (``conf/model/*.yaml``)."""

    name: str = "plt_tiny"              # the defaults are plt_tiny, the default job's model
    num_layers: int = 4
    hidden_size: int = 256
    num_attention_heads: int = 4
    num_query_groups: int = 2
    ffn_hidden_size: int = 640
    norm_epsilon: float = 1e-5
    init_method_std: float = 0.02
    # Activation recomputation: none | full (recompute each layer's forward in backward).
    recompute: str = "none"

    def validate(self, tensor_parallel: int = 1, pipeline_parallel: int = 1,
                 virtual_pipeline_parallel: Optional[int] = None) -> None:
        """Refuse an architecture (or a layout of it) that cannot be built, naming the field:
        the checks PLTConfig runs when it is built, available without building it (the trainer
        and the SLURM launcher run them before anything starts)."""
        require(self.recompute in ("none", "full"),
                f"model.recompute={self.recompute!r}; use 'none' or 'full'")
        require(pipeline_parallel == 1 or virtual_pipeline_parallel in (None, self.num_loops),
                f"parallel.vpp={virtual_pipeline_parallel} but PLT pipelines its loops as the "
                f"virtual chunks: use parallel.vpp=null or parallel.vpp={self.num_loops} "
                f"(model.num_loops)")
        validate_architecture(self, tensor_parallel, pipeline_parallel)

    def build(
        self,
        *,
        tensor_parallel: int = 1,
        pipeline_parallel: int = 1,
        virtual_pipeline_parallel: Optional[int] = None,
        sequence_parallel: bool = False,
        params_dtype: torch.dtype = torch.float32,
        use_cpu_initialization: bool = True,
        perform_initialization: bool = True,
    ) -> "PLTConfig":
        """The megatron-core config of this architecture under a parallel layout and precision.

        With pipeline parallelism the loops are the virtual pipeline chunks (model/pipeline.py):
        ``virtual_pipeline_parallel`` is the run's settled virtual pipeline size, the layout's
        (pretrain/layout.py ParallelLayout.vpp: ``num_loops`` when pp > 1 and R > 1, else None);
        megatron's schedules read it from this config. Raises ConfigError naming the field
        (``validate``), ValueError for a virtual pipeline size the layout would not have given.
        """
        self.validate(tensor_parallel, pipeline_parallel, virtual_pipeline_parallel)
        if virtual_pipeline_parallel != virtual_pipeline_size(self.num_loops, pipeline_parallel):
            raise ValueError(
                f"virtual_pipeline_parallel={virtual_pipeline_parallel} with pp="
                f"{pipeline_parallel} and num_loops={self.num_loops}: pass the layout's settled "
                f"vpp (pretrain/layout.py ParallelLayout.vpp; model/pipeline.py "
                f"virtual_pipeline_size)")
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields.pop("name")
        recompute = fields.pop("recompute")
        eps = fields.pop("norm_epsilon")
        return PLTConfig(
            **fields,
            layernorm_epsilon=eps,
            tensor_model_parallel_size=tensor_parallel,
            pipeline_model_parallel_size=pipeline_parallel,
            virtual_pipeline_model_parallel_size=virtual_pipeline_parallel,
            sequence_parallel=sequence_parallel,
            params_dtype=params_dtype,
            bf16=params_dtype == torch.bfloat16,
            pipeline_dtype=params_dtype,
            use_cpu_initialization=use_cpu_initialization,
            perform_initialization=perform_initialization,
            # gloo's batch_isend_irecv pairs the sends and receives between two ranks in issue
            # order; with pp=2 both pipeline neighbours are one rank, and megatron's batched order
            # then hands a stage the gradient where it expects the activation. The unbatched path
            # orders them by rank parity. NCCL (GPU) keeps megatron's batched default.
            batch_p2p_comm=torch.cuda.is_available(),
            recompute_granularity="full" if recompute == "full" else None,
            recompute_method="uniform" if recompute == "full" else None,
            recompute_num_layers=1 if recompute == "full" else None,
        )


@dataclass
class PLTConfig(PLTFields, TransformerConfig):
    """megatron-core TransformerConfig plus the Parallel Loop Transformer fields."""

    # The fixed LoopCoder-v2 architecture (docs/spec.md#notation).
    normalization: str = "RMSNorm"
    gated_linear_unit: bool = True
    activation_func: callable = F.silu
    add_bias_linear: bool = False
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    bias_activation_fusion: bool = False
    bias_dropout_fusion: bool = False
    apply_rope_fusion: bool = False
    masked_softmax_fusion: bool = False
    persist_layer_norm: bool = False
    gradient_accumulation_fusion: bool = False

    def __post_init__(self):
        validate_architecture(self, self.tensor_model_parallel_size,
                              self.pipeline_model_parallel_size)
        # megatron's MLP takes its fused SwiGLU from this field (model/fused_elementwise.py)
        self.bias_activation_fusion = self.fused_elementwise
        super().__post_init__()



# The valid range of every numeric model field: (fields, test, the range in words). A value out of
# range does not fail when the model is built: it trains NaN from step 1 (a negative norm epsilon,
# RoPE base 0) or builds nothing useful, and exits 0 with a checkpoint. So each is refused at start.
_AT_LEAST_1 = ("num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size", "vocab_size",
               "max_position_embeddings", "num_loops", "swa_window")
VALUE_RANGES = (
    (_AT_LEAST_1, lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    (("num_query_groups",), lambda v: v is None or (_is_int(v) and v >= 1),
     "an integer >= 1 (or null: one group per head)"),
    (("norm_epsilon", "init_method_std"), lambda v: _is_real(v) and v > 0,
     "a finite number > 0"),
    # inv_freq = base^(-2i/d): a base <= 1 gives no decaying frequencies (1: every position alike).
    (("rotary_base",), lambda v: _is_real(v) and v > 1, "a finite number > 1 (e.g. 10000)"),
    (("clp_emb_scale", "clp_hidden_scale"), lambda v: _is_real(v), "a finite number"),
    (("hidden_dropout", "attention_dropout"), lambda v: _is_real(v) and 0 <= v < 1,
     "a number in [0, 1)"),
)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _field(cfg, name: str):
    if name == "norm_epsilon" and not hasattr(cfg, name):  # PLTConfig: megatron's name
        name = "layernorm_epsilon"
    return getattr(cfg, name, None), hasattr(cfg, name)


def validate_values(cfg, key: Callable[[str], str] = "model.{}".format) -> None:
    """Refuse a numeric model field outside its valid range (VALUE_RANGES), naming it through
    `key` (our model.* key by default; the Hugging Face import passes its config.json names) and
    the range. `cfg`: a ModelConfig, a PLTConfig, or anything with these attributes; fields it does
    not have are not checked."""
    for names, valid, words in VALUE_RANGES:
        for name in names:
            value, present = _field(cfg, name)
            require(not present or valid(value),
                    f"{key(name)}={value!r} is out of range: it must be {words}")


def validate_architecture(cfg, tp: int, pp: int) -> None:
    """The architecture fields (of a ModelConfig or a PLTConfig) against each other and the layout."""
    validate_values(cfg)
    require(cfg.num_loops >= 1, f"model.num_loops={cfg.num_loops}; it must be >= 1 (1 = plain GPT)")
    require(cfg.swa_window >= 1, f"model.swa_window={cfg.swa_window}; it must be >= 1 (keys back)")
    require(cfg.gate_input in GATE_INPUTS,
            f"model.gate_input={cfg.gate_input!r}; use one of {GATE_INPUTS}")
    require(cfg.attention_backend in ATTENTION_BACKENDS,
            f"model.attention_backend={cfg.attention_backend!r}; use one of {ATTENTION_BACKENDS}")
    require(not cfg.chunked_cross_entropy or tp == 1,
            f"model.chunked_cross_entropy=true with parallel.tp={tp}: the chunked head supports "
            f"tp=1 only (no vocab-parallel chunks yet); set model.chunked_cross_entropy=false")
    require(cfg.num_layers >= 1, f"model.num_layers={cfg.num_layers}; it must be >= 1")
    require(cfg.num_attention_heads >= 1 and cfg.hidden_size % cfg.num_attention_heads == 0,
            f"model.num_attention_heads={cfg.num_attention_heads} does not divide "
            f"model.hidden_size={cfg.hidden_size}")
    groups = cfg.num_query_groups or cfg.num_attention_heads
    require(groups >= 1 and cfg.num_attention_heads % groups == 0,
            f"model.num_query_groups={groups} does not divide "
            f"model.num_attention_heads={cfg.num_attention_heads}")
    require(cfg.num_attention_heads % tp == 0,
            f"parallel.tp={tp} does not divide model.num_attention_heads={cfg.num_attention_heads}")
    require(groups % tp == 0 or tp % groups == 0,
            f"parallel.tp={tp} and model.num_query_groups={groups}: one must divide the other")
    require(cfg.ffn_hidden_size is not None and cfg.ffn_hidden_size >= 1
            and cfg.ffn_hidden_size % tp == 0,
            f"parallel.tp={tp} does not divide model.ffn_hidden_size={cfg.ffn_hidden_size}")
    require(cfg.vocab_size >= 1, f"model.vocab_size={cfg.vocab_size}; it must be >= 1")
    require(cfg.num_layers % pp == 0,
            f"parallel.pp={pp} does not divide model.num_layers={cfg.num_layers}")
