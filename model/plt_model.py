"""The Parallel Loop Transformer (shared/PLT_SPEC.md "Forward pass (training and prefill)").

    h0 = E(x);  h1 = f(h0)                               loop 1: causal attention, K/V kept
    for r = 2..R:  B = a * E(x) + b * shift(RMSNorm_final(h_{r-1}));  h_r = f(B)
    logits = Head(RMSNorm_final(h_R))

f is one block of ``num_layers`` layers whose weights every loop shares. ``shift`` moves the hidden
states one position later along the sequence (position 0 gets zeros): the cross-loop-parallelism
(CLP) offset that lets all loops of consecutive tokens run in one batched forward at decode time.
Every loop uses the same absolute RoPE positions. With ``num_loops=1`` this is a plain GPT.
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional

import torch
from megatron.core import tensor_parallel
from megatron.core.models.common.embeddings.language_model_embedding import LanguageModelEmbedding
from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
from megatron.core.models.common.language_module.language_module import LanguageModule
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec, build_module
from torch.utils.checkpoint import checkpoint

from model.config import PLTConfig
from model.layer import plt_layer_spec
from model.norm import RMSNorm


class LoopStates(NamedTuple):
    hidden: List[torch.Tensor]
    kv: List[list]


class PLTBlock(MegatronModule):
    """The shared block f (its layers) and the final norm; runs one loop per call."""

    def __init__(self, config: PLTConfig, spec: ModuleSpec):
        super().__init__(config=config)
        self.layers = torch.nn.ModuleList(
            build_module(spec, config=config, layer_number=i + 1) for i in range(config.num_layers)
        )
        # The final norm is also the per-loop norm of loops >= 2 (PLT_SPEC: "the same weights as
        # the final norm"), so every stage that runs a loop transition needs it.
        self.final_layernorm = RMSNorm(config, config.hidden_size, eps=config.layernorm_epsilon)

    def forward(self, hidden_states, rotary_pos_emb, loop_index: int, first_loop_kv=None):
        """One loop through every layer. Returns (hidden_states, this loop's K/V per layer)."""
        kvs = []
        recompute = self.config.recompute_granularity == "full" and torch.is_grad_enabled()
        for i, layer in enumerate(self.layers):
            kv_in = None if first_loop_kv is None else first_loop_kv[i]
            if recompute:
                # Non-reentrant checkpointing: gradients still reach loop 1's K/V through kv_in.
                hidden_states, kv = checkpoint(layer, hidden_states, rotary_pos_emb, loop_index,
                                               kv_in, use_reentrant=False)
            else:
                hidden_states, kv = layer(hidden_states, rotary_pos_emb, loop_index, kv_in)
            kvs.append(kv)
        return hidden_states, kvs


def shift_one_position(hidden_states: torch.Tensor, sequence_parallel: bool) -> torch.Tensor:
    """shift(h)_i = h_{i-1}, shift(h)_0 = 0, along the sequence (dim 0 of [s, b, hidden])."""
    if sequence_parallel:
        # Each tensor-parallel rank holds a slice of the sequence; the shift crosses slices. The
        # gathered tensor is replicated, so its gradient is split back, not reduced (hence False).
        full = tensor_parallel.gather_from_sequence_parallel_region(
            hidden_states, tensor_parallel_output_grad=False
        )
        return tensor_parallel.scatter_to_sequence_parallel_region(
            shift_one_position(full, sequence_parallel=False)
        )
    return torch.cat([torch.zeros_like(hidden_states[:1]), hidden_states[:-1]], dim=0)


class PLTModel(LanguageModule):
    """Embedding, the loop driver, final norm and output head, on megatron-core modules.

    ``forward(input_ids, position_ids=None, attention_mask=None, labels=None)`` returns logits
    ``[batch, seq, vocab]`` without labels and the per-token loss ``[batch, seq]`` with labels
    (megatron's convention). The loss is on the last loop only (PLT_SPEC DECISION).
    """

    def __init__(self, config: PLTConfig, layer_spec: Optional[ModuleSpec] = None,
                 parallel_output: bool = True):
        super().__init__(config=config)
        if config.pipeline_model_parallel_size != 1:
            raise NotImplementedError(
                "PLTModel runs with parallel.pp=1 only so far; pipeline parallelism over the loops "
                "is not built yet. Use parallel.pp=1."
            )
        self.pre_process = self.post_process = True
        self.vocab_size = config.vocab_size
        self.max_sequence_length = config.max_position_embeddings
        self.share_embeddings_and_output_weights = not config.untie_embeddings_and_output_weights
        self.parallel_output = parallel_output
        self.position_embedding_type = "rope"

        self.embedding = LanguageModelEmbedding(
            config=config, vocab_size=config.vocab_size,
            max_sequence_length=config.max_position_embeddings, position_embedding_type="rope",
            tp_group=self.pg_collection.tp,
        )
        self.rotary_pos_emb = RotaryEmbedding(
            kv_channels=config.kv_channels, rotary_percent=1.0, rotary_base=config.rotary_base,
            use_cpu_initialization=config.use_cpu_initialization,
        )
        self.decoder = PLTBlock(config, layer_spec or plt_layer_spec())
        self.output_layer = tensor_parallel.ColumnParallelLinear(
            config.hidden_size, config.vocab_size, config=config, init_method=config.init_method,
            bias=False, skip_bias_add=False, gather_output=not parallel_output,
            skip_weight_param_allocation=self.share_embeddings_and_output_weights,
            tp_group=self.pg_collection.tp,
        )
        self.setup_embeddings_and_output_layer()

    def set_input_tensor(self, input_tensor) -> None:
        """megatron's pipeline schedules call this; with pp=1 there is never an input tensor."""

    # -- pieces ------------------------------------------------------------------------------
    def _rotary(self, seq_len: int, position_ids: Optional[torch.Tensor]) -> torch.Tensor:
        """RoPE frequencies [s, 1 or b, 1, d]; the same absolute positions in every loop."""
        if position_ids is None:
            return self.rotary_pos_emb(seq_len)
        freqs = self.rotary_pos_emb(int(position_ids.max()) + 1)  # [S, 1, 1, d]
        return freqs[position_ids.t()].squeeze(2)  # [s, b, 1, d]

    def combine_loop_input(self, embeddings: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """a * E(x_i) + b * RMSNorm_final(h_{r-1, i-1}), given h_{r-1} already at position i-1.

        Training shifts the whole sequence first (``loop_input``); decoding passes the hidden state
        it saved at the previous position (model/decoding.py).
        """
        cfg = self.config
        if cfg.normalize_per_loop:
            previous = self.decoder.final_layernorm(previous)
        return cfg.clp_emb_scale * embeddings + cfg.clp_hidden_scale * previous

    def loop_input(self, embeddings: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """B_r for loop r >= 2 from E(x) and h_{r-1} over the sequence (PLT_SPEC "Forward pass")."""
        if not self.config.clp:
            # Ablation clp=false: the vanilla sequential looped transformer, B = h_{r-1} exactly
            # (no shift, no embedding term, no per-loop norm): PLT_SPEC "Ablation flag".
            return previous
        # shift(h)_0 = 0 and RMSNorm(0) = 0, so shifting before the per-loop norm is the same as
        # shifting after it.
        shifted = shift_one_position(previous, self.config.sequence_parallel)
        return self.combine_loop_input(embeddings, shifted)

    def run_loops(self, input_ids: torch.Tensor, position_ids: Optional[torch.Tensor] = None,
                  keep_kv: bool = False) -> "LoopStates":
        """The R loops over a whole sequence (training, eval, prefill).

        Returns every loop's output, ``hidden = [h_0 (= E(x)), h_1, ..., h_R]`` in megatron's
        [s, b, hidden] layout (a slice of the sequence under sequence parallelism), and
        ``kv[r][layer]`` = (keys, values) of loop r+1: loop 1's always (the later loops read it),
        the later loops' only with ``keep_kv`` (prefill fills the decode cache from them; in
        training they would only hold memory that activation recomputation means to free).
        """
        embeddings = self.embedding(input_ids=input_ids, position_ids=None)
        rotary = self._rotary(input_ids.shape[1], position_ids)
        hidden, first_loop_kv = self.decoder(embeddings, rotary, loop_index=0)
        states = LoopStates(hidden=[embeddings, hidden], kv=[first_loop_kv])
        for loop_index in range(1, self.config.num_loops):
            hidden, kv = self.decoder(self.loop_input(embeddings, hidden), rotary, loop_index,
                                      first_loop_kv if self.config.shared_kv else None)
            states.hidden.append(hidden)
            if keep_kv:
                states.kv.append(kv)
        return states

    def head(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Final norm and output layer: [s, b, hidden] -> logits [s, b, vocab (local shard)]."""
        weight = self.shared_embedding_or_output_weight() if (
            self.share_embeddings_and_output_weights) else None
        logits, _ = self.output_layer(self.decoder.final_layernorm(hidden_states), weight=weight)
        return logits

    # -- the model's call ---------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, position_ids: Optional[torch.Tensor] = None,
                attention_mask: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        if attention_mask is not None:
            # DECISION: PLT is causal by construction (the CLP shift assumes it); a custom mask
            # would silently disagree with the shifted inputs, so refuse it.
            raise ValueError("PLTModel is causal-only: pass attention_mask=None")
        logits = self.head(self.run_loops(input_ids, position_ids).hidden[-1])
        if labels is None:
            return logits.transpose(0, 1).contiguous()  # [b, s, vocab]
        return self.compute_language_model_loss(labels, logits)  # [b, s]
