"""The Parallel Loop Transformer (docs/spec.md#forward-pass).

    h0 = E(x);  h1 = f(h0)                               loop 1: causal attention, K/V kept
    for r = 2..R:  B = a * E(x) + b * shift(RMSNorm_final(h_{r-1}));  h_r = f(B)
    logits = Head(RMSNorm_final(h_R))

f is one block of ``num_layers`` layers whose weights every loop shares. ``shift`` moves the hidden
states one position later along the sequence (position 0 gets zeros): the cross-loop-parallelism
(CLP) offset that lets all loops of consecutive tokens run in one batched forward at decode time.
``PLTModel.loop_input`` is the one construction of B (and of its ablations, docs/spec.md#ablations:
clp=false, and clp_offset=0, the same input without the shift).
Every loop uses the same absolute RoPE positions. With ``num_loops=1`` this is a plain GPT.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import List, NamedTuple, Optional

import torch
from megatron.core import parallel_state, tensor_parallel
from megatron.core.dist_checkpointing.utils import replace_prefix_for_sharding
from megatron.core.enums import ModelType
from megatron.core.models.common.embeddings.language_model_embedding import LanguageModelEmbedding
from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
from megatron.core.models.common.language_module.language_module import LanguageModule
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec, build_module
from megatron.core.transformer.utils import sharded_state_dict_default
from torch.utils.checkpoint import checkpoint

from model.chunked_cross_entropy import linear_cross_entropy
from model.config import PLTConfig
from model.layer import plt_layer_spec
from model.norm import RMSNorm
from model.pipeline import LoopKVExchange


class LoopStates(NamedTuple):
    hidden: List[torch.Tensor]
    kv: List[list]


class PLTBlock(MegatronModule):
    """The shared block f (its layers) and the final norm; runs one loop per call."""

    def __init__(self, config: PLTConfig, spec: ModuleSpec, num_layers: int,
                 final_norm: bool = True, init_seed: int = 0, first_layer: int = 0):
        super().__init__(config=config)
        # megatron's TransformerLayer adds this pipeline stage's layer offset to layer_number.
        layers = []
        for i in range(num_layers):
            with seeded_init(init_seed, 1 + first_layer + i):
                layers.append(build_module(spec, config=config, layer_number=i + 1))
        self.layers = torch.nn.ModuleList(layers)
        # The final norm is also the per-loop norm between loops (docs/spec.md#forward-pass: "the same weights as
        # the final norm"); under pipeline parallelism the last stage applies both.
        self.final_layernorm = RMSNorm(config, config.hidden_size, eps=config.layernorm_epsilon
                                       ) if final_norm else None

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (),
                           metadata: dict = None):
        """Checkpoint keys by global layer index (``decoder.layers.<g>.``), with each layer's own
        tensor-parallel sharding: the same keys for every TP/PP layout, so a checkpoint reshards.
        (MegatronModule's default would see the ModuleList as plain tensors and mark them whole.)
        """
        sharded = {}
        for local_index, layer in enumerate(self.layers):
            local_prefix = f"{prefix}layers.{local_index}."
            layer_sharded = layer.sharded_state_dict(local_prefix, (), metadata)
            replace_prefix_for_sharding(layer_sharded, local_prefix,
                                        f"{prefix}layers.{layer.layer_number - 1}.")
            sharded.update(layer_sharded)
        if self.final_layernorm is not None:
            sharded.update(sharded_state_dict_default(
                self.final_layernorm, f"{prefix}final_layernorm.", sharded_offsets, metadata))
        return sharded

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


@contextlib.contextmanager
def seeded_init(base_seed: int, part: int):
    """Initialise one part of the model (embedding, layer g, head) from its own seed.

    With CPU initialisation megatron builds every tensor-parallel weight from the full master
    weight, so this makes the initial weights the same for every layout (TP, PP, DP), which is what
    lets a run be compared with, or resumed under, another layout. It restores the RNG after.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(base_seed + part)
        yield


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
    (megatron's convention). The loss is on the last loop only (docs/spec.md#loss, a DECISION).

    With pipeline parallelism this module is one stage (its L/P layers; the embedding on the first
    stage, final norm and head on the last) and its forward runs loop 1 only: the later loops are
    the views of model/pipeline.py, which call ``forward_loop_chunk``.
    """

    def __init__(self, config: PLTConfig, layer_spec: Optional[ModuleSpec] = None,
                 parallel_output: bool = True, pre_process: Optional[bool] = None,
                 post_process: Optional[bool] = None):
        super().__init__(config=config)
        pipelined = config.pipeline_model_parallel_size > 1
        if pipelined and not config.untie_embeddings_and_output_weights:
            raise ValueError("parallel.pp > 1 needs model.untie_embeddings_and_output_weights=true"
                             " (see model/pipeline.py)")
        self.pre_process = parallel_state.is_pipeline_first_stage(ignore_virtual=True) if (
            pre_process is None) else pre_process
        self.post_process = parallel_state.is_pipeline_last_stage(ignore_virtual=True) if (
            post_process is None) else post_process
        self.vocab_size = config.vocab_size
        self.max_sequence_length = config.max_position_embeddings
        self.share_embeddings_and_output_weights = not config.untie_embeddings_and_output_weights
        self.parallel_output = parallel_output
        self.position_embedding_type = "rope"
        self.model_type = ModelType.encoder_or_decoder  # what megatron's schedules read

        # One draw from the caller's RNG (seeded alike on every rank) seeds every part.
        init_seed = int(torch.randint(0, 2**31 - 1, (1,), device="cpu"))
        if self.pre_process:
            with seeded_init(init_seed, 0):
                self.embedding = LanguageModelEmbedding(
                    config=config, vocab_size=config.vocab_size,
                    max_sequence_length=config.max_position_embeddings,
                    position_embedding_type="rope", tp_group=self.pg_collection.tp,
                )
        self.rotary_pos_emb = RotaryEmbedding(
            kv_channels=config.kv_channels, rotary_percent=1.0, rotary_base=config.rotary_base,
            use_cpu_initialization=config.use_cpu_initialization,
        )
        stage_layers = config.num_layers // config.pipeline_model_parallel_size
        # Each stage holds one contiguous slice of L/P layers that every loop (virtual chunk)
        # reuses: megatron's non-interleaved layer numbering, so the layers are built without
        # the virtual pipeline size that the schedules read from this model's config.
        layer_config = dataclasses.replace(config, virtual_pipeline_model_parallel_size=None) if (
            config.virtual_pipeline_model_parallel_size) else config
        self.decoder = PLTBlock(
            layer_config, layer_spec or plt_layer_spec(), num_layers=stage_layers,
            final_norm=self.post_process, init_seed=init_seed,
            first_layer=parallel_state.get_pipeline_model_parallel_rank() * stage_layers,
        )
        if self.post_process:
            with seeded_init(init_seed, 1 + config.num_layers):
                self.output_layer = tensor_parallel.ColumnParallelLinear(
                    config.hidden_size, config.vocab_size, config=config,
                    init_method=config.init_method, bias=False, skip_bias_add=False,
                    gather_output=not parallel_output,
                    skip_weight_param_allocation=self.pre_process
                    and self.share_embeddings_and_output_weights,
                    tp_group=self.pg_collection.tp,
                )
        self.setup_embeddings_and_output_layer()
        self.input_tensor = None
        self.kv_exchange = LoopKVExchange(config.num_loops) if (
            pipelined and config.has_gated_loops) else None

    def set_input_tensor(self, input_tensor) -> None:
        """What megatron's pipeline schedules received from the previous stage for this chunk."""
        if isinstance(input_tensor, (list, tuple)):
            input_tensor = input_tensor[0]
        self.input_tensor = input_tensor

    # -- pieces ------------------------------------------------------------------------------
    def rotary(self, seq_len: int, position_ids: Optional[torch.Tensor]) -> torch.Tensor:
        """RoPE frequencies [s, 1 or b, 1, d]; the same absolute positions in every loop (the full
        forward's, and the decoder's one position per row)."""
        self._rope_in_model_dtype()
        if position_ids is None:
            return self.rotary_pos_emb(seq_len)
        freqs = self.rotary_pos_emb(int(position_ids.max()) + 1)  # [S, 1, 1, d]
        return freqs[position_ids.t()].squeeze(2)  # [s, b, 1, d]

    def _rope_in_model_dtype(self) -> None:
        """megatron computes the RoPE angles in float32 whatever the model's dtype; a float64
        model (the exactness checks against references) gets float64 angles instead, and float32
        ones again (megatron's own formula) once cast back."""
        rope = self.rotary_pos_emb
        dtype = torch.float64 if next(self.parameters()).dtype == torch.float64 else torch.float32
        if rope.inv_freq.dtype != dtype:
            dim = 2 * rope.inv_freq.numel()
            rope.inv_freq = 1.0 / (self.config.rotary_base ** (
                torch.arange(0, dim, 2, dtype=dtype, device=rope.inv_freq.device) / dim))

    # -- the loop input B_r: one construction for the full forward, the pipeline and decoding ---
    def loop_input(self, embeddings: torch.Tensor, previous: torch.Tensor,
                   aligned: bool = False) -> torch.Tensor:
        """B_r, the input of loop r >= 2, from E(x) and loop r-1's output (docs/spec.md#forward-pass):

            a * E(x_i) + b * RMSNorm_final(h_{r-1, i - clp_offset})    (clp; clp_offset 1 or 0)
            h_{r-1, i}                                                 (clp=false)

        ``previous``: h_{r-1} at the positions of ``embeddings`` ([s, b, hidden]), the offset then
        applied here along the sequence; or, with ``aligned``, already the vector loop r reads at
        each position (the decoder's h_{r-1} of position t-1 for token t, kept from the previous
        step). The full forward calls this; a pipeline runs its two halves on the stages that hold
        their weights (``loop_transition`` on the last, ``combine_loop_input`` on the first);
        model/decoding.py calls it with ``aligned``.
        """
        return self.combine_loop_input(embeddings, self.loop_transition(previous, aligned))

    def loop_transition(self, hidden: torch.Tensor, aligned: bool = False) -> torch.Tensor:
        """What loop r hands to loop r+1 besides E(x): shift(RMSNorm_final(h_r)) (clp), the same
        without the shift (clp_offset=0, the neutralized arm of docs/spec.md#ablations: CLP's
        construction without the offset's mismatch), or h_r itself (clp=false, the vanilla
        sequential looped transformer: no shift, no embedding term, no per-loop norm)."""
        if not self.config.clp:
            return hidden
        normed = self.per_loop_norm(hidden)
        if aligned or self.config.clp_offset == 0:
            return normed
        return shift_one_position(normed, self.config.sequence_parallel)

    def combine_loop_input(self, embeddings: torch.Tensor,
                           transition: torch.Tensor) -> torch.Tensor:
        """a * E(x_i) + b * transition_i (clp), or the transition alone (clp=false)."""
        cfg = self.config
        if not cfg.clp:
            return transition
        return cfg.clp_emb_scale * embeddings + cfg.clp_hidden_scale * transition

    def per_loop_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        """RMSNorm_final applied between loops (flag ``normalize_per_loop``, default on)."""
        return self.decoder.final_layernorm(hidden) if self.config.normalize_per_loop else hidden

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
        rotary = self.rotary(input_ids.shape[1], position_ids)
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

    def head_output(self, hidden_states: torch.Tensor,
                    labels: Optional[torch.Tensor]) -> torch.Tensor:
        """Logits [b, s, vocab] without labels, the per-token loss [b, s] with them: through the
        full logits, or with ``chunked_cross_entropy`` (tp=1) head and loss in chunks of tokens
        that never hold all the logits (model/chunked_cross_entropy.py)."""
        if labels is None or not self.config.chunked_cross_entropy:
            return self._output(self.head(hidden_states), labels)
        weight = self.shared_embedding_or_output_weight() if (
            self.share_embeddings_and_output_weights) else self.output_layer.weight
        losses = linear_cross_entropy(self.decoder.final_layernorm(hidden_states), weight,
                                      labels.transpose(0, 1))  # [s, b], megatron's order
        return losses.transpose(0, 1).contiguous()

    # -- the model's call ---------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, position_ids: Optional[torch.Tensor] = None,
                attention_mask: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        if attention_mask is not None:
            # DECISION: PLT is causal by construction (the CLP shift assumes it); a custom mask
            # would silently disagree with the shifted inputs, so refuse it.
            raise ValueError("PLTModel is causal-only: pass attention_mask=None")
        if self.config.pipeline_model_parallel_size > 1:
            return self.forward_loop_chunk(0, input_ids, labels)
        return self.head_output(self.run_loops(input_ids, position_ids).hidden[-1], labels)

    def _output(self, logits: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
        if labels is None:
            return logits.transpose(0, 1).contiguous()  # [b, s, vocab]
        return self.compute_language_model_loss(labels, logits)  # [b, s]

    def forward_loop_chunk(self, loop_index: int, input_ids: Optional[torch.Tensor],
                           labels: Optional[torch.Tensor]) -> torch.Tensor:
        """One loop over this pipeline stage's layers (a virtual chunk, model/pipeline.py).

        The first stage builds the loop's input (E(x), or E(x) combined with the transition the
        last stage sent); the last stage ends the loop with the transition to the next loop, or,
        after the last loop, the head and loss. Positions are 0..s-1 on every stage.
        """
        cfg = self.config
        if self.pre_process:
            embeddings = self.embedding(input_ids=input_ids, position_ids=None)
            hidden = embeddings if loop_index == 0 else self.combine_loop_input(
                embeddings, self.input_tensor)
        else:
            hidden = self.input_tensor
        seq_len = hidden.shape[0] * (cfg.tensor_model_parallel_size if cfg.sequence_parallel
                                     else 1)
        rotary = self.rotary_pos_emb(seq_len)
        exchange = self.kv_exchange
        first_loop_kv = exchange.take(loop_index) if exchange and loop_index > 0 else None
        hidden, kv = self.decoder(hidden, rotary, loop_index, first_loop_kv)
        if exchange and loop_index == 0:
            hidden = exchange.publish(hidden, kv)
        if not self.post_process:
            return hidden
        if loop_index < cfg.num_loops - 1:
            return self.loop_transition(hidden)
        return self.head_output(hidden, labels)
