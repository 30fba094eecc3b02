"""Cached decoding with cross-loop parallelism (docs/spec.md#decoding).

At step t, once token x_t is known, all R loops of position t run in ONE forward of the block: R
rows per sequence, loop r's input built from E(x_t) and the output of loop r-1 at position t-1
that the previous step saved. Within each layer loop 1's K/V of x_t go into the cache before
loops >= 2 read it. The cache holds

- the full loop-1 K/V per layer (``full_k/full_v``: [loops with a full cache, layers, batch,
  max_length, kv_heads, head_dim]);
- for each loop >= 2, a ring of the last ``swa_window + 1`` tokens' K/V per layer (``window_k/v``:
  [layers, loops >= 2, batch, swa_window + 1, kv_heads, head_dim], layer-major so that one layer's
  rings of all loops are one contiguous block for a single attention call) and the position held by
  each slot (``window_pos``, -1 = empty);
- the R-1 hidden vectors saved from the previous position (``saved_hidden``),

so it grows with R only by the windows and the saved vectors. Without shared KV
(``shared_kv=false``, the vanilla looped transformer) every loop keeps a full cache instead.

Two modes: ``parallel`` (PLT's one forward of R*b rows per token) and ``sequential`` (R forwards of
b rows, one loop after another: the vanilla looped transformer's cost, and the only way to decode
a ``clp=false`` model, whose loop r needs loop r-1's output at the same position).

Rows may hold prompts of different lengths: every row keeps its own position, and attention picks
each row's visible cache slots with a mask. Prompts are prefilled one row at a time by the same
full forward that training runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
from megatron.core import parallel_state
from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

from model.pipeline import holds_whole_model


class DecodeCache:
    def __init__(self, model, batch_size: int, max_length: int):
        cfg = model.config
        attention = model.decoder.layers[0].self_attention
        kv_heads, head_dim = attention.num_query_groups_per_partition, cfg.kv_channels
        layers, loops = len(model.decoder.layers), cfg.num_loops
        param = next(model.parameters())
        like = dict(dtype=param.dtype, device=param.device)
        self.batch_size, self.max_length, self.num_loops = batch_size, max_length, loops
        self.window_slots = cfg.swa_window + 1  # 64 keys back + the token itself
        self.windowed_loops = loops - 1 if cfg.shared_kv else 0
        full_loops = loops - self.windowed_loops
        self.full_k = torch.zeros(full_loops, layers, batch_size, max_length, kv_heads, head_dim,
                                  **like)
        self.full_v = torch.zeros_like(self.full_k)
        self.window_k = torch.zeros(layers, self.windowed_loops, batch_size, self.window_slots,
                                    kv_heads, head_dim, **like)
        self.window_v = torch.zeros_like(self.window_k)
        self.window_pos = torch.full((layers, self.windowed_loops, batch_size, self.window_slots),
                                     -1, dtype=torch.long, device=param.device)
        self.saved_hidden = torch.zeros(loops - 1, batch_size, cfg.hidden_size, **like)
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=param.device)

    def nbytes(self) -> int:
        tensors = (self.full_k, self.full_v, self.window_k, self.window_v, self.window_pos,
                   self.saved_hidden, self.lengths)
        return sum(t.numel() * t.element_size() for t in tensors)

    def is_windowed(self, loop: int) -> bool:
        return loop >= self.num_loops - self.windowed_loops

    def fill_row(self, row: int, loop: int, layer: int, keys: torch.Tensor, values: torch.Tensor):
        """Prefill: positions 0..P-1 of one row from [P, kv_heads, d] keys/values."""
        length = keys.shape[0]
        if self.is_windowed(loop):
            w = loop - (self.num_loops - self.windowed_loops)
            positions = torch.arange(max(0, length - self.window_slots), length,
                                     device=keys.device)
            slots = positions % self.window_slots
            self.window_k[layer, w, row, slots] = keys[positions]
            self.window_v[layer, w, row, slots] = values[positions]
            self.window_pos[layer, w, row, slots] = positions
        else:
            self.full_k[loop, layer, row, :length] = keys
            self.full_v[loop, layer, row, :length] = values


@dataclass
class DecodeStep:
    """One layer's view of the cache during one decode forward (what PLTSelfAttention._decode
    reads and writes). Rows are loop-major: ``loops[j]``'s rows are j*b .. (j+1)*b - 1."""

    cache: DecodeCache
    layer: int
    loops: Sequence[int]

    @property
    def batch_size(self) -> int:
        return self.cache.batch_size

    def _rows(self):
        return torch.arange(self.cache.batch_size, device=self.cache.lengths.device)

    def write_full(self, loop: int, k: torch.Tensor, v: torch.Tensor):
        c, t = self.cache, self.cache.lengths
        c.full_k[loop, self.layer, self._rows(), t] = k[:, 0]
        c.full_v[loop, self.layer, self._rows(), t] = v[:, 0]
        return self.read_full(loop)

    def read_full(self, loop: int):
        """Keys/values of positions 0..t per row (sliced to the longest row) and their mask."""
        c, t = self.cache, self.cache.lengths
        span = int(t.max()) + 1
        mask = torch.arange(span, device=t.device)[None, :] <= t[:, None]
        return c.full_k[loop, self.layer, :, :span], c.full_v[loop, self.layer, :, :span], mask

    def write_windows(self, loops: Sequence[int], k: torch.Tensor, v: torch.Tensor):
        """Write the new token's K/V of consecutive loops >= 2 (rows loop-major, [W*b, 1, kv_heads,
        d]) into their rings; return the rings stacked the same way ([W*b, slots, kv_heads, d],
        views) and which slots each row sees ([W*b, slots])."""
        c, t, b = self.cache, self.cache.lengths, self.cache.batch_size
        first = loops[0] - (c.num_loops - c.windowed_loops)
        rings = slice(first, first + len(loops))
        slots = t % c.window_slots
        shape = (len(loops), b) + tuple(k.shape[2:])
        c.window_k[self.layer, rings][:, self._rows(), slots] = k[:, 0].view(shape)
        c.window_v[self.layer, rings][:, self._rows(), slots] = v[:, 0].view(shape)
        c.window_pos[self.layer, rings][:, self._rows(), slots] = t
        # The ring holds only positions <= t; a slot is visible when it is filled and at most
        # swa_window positions back (docs/spec.md#window: 65 keys including the query).
        pos = c.window_pos[self.layer, rings]  # [W, b, slots]
        mask = (pos >= 0) & (pos >= (t - (c.window_slots - 1))[None, :, None])
        return (c.window_k[self.layer, rings].flatten(0, 1),
                c.window_v[self.layer, rings].flatten(0, 1), mask.flatten(0, 1))


def decode_mode(config, mode: Optional[str] = None) -> str:
    """The decode mode a model runs: ``mode``, or (None) parallel when the model has cross-loop
    parallelism (clp, or one loop), else sequential, the only way a clp=false model decodes."""
    if mode is None:
        mode = "parallel" if config.clp or config.num_loops == 1 else "sequential"
    if mode not in ("parallel", "sequential"):
        raise ValueError(f"decode mode {mode!r}; use 'parallel' or 'sequential'")
    if mode == "parallel" and config.num_loops > 1 and not config.clp:
        raise ValueError("a clp=false model has no cross-loop parallelism: loop r needs loop "
                         "r-1 at the same position; decode it with mode='sequential'")
    return mode


class LoopDecoder:
    """Prefill and per-token decode of a PLT model with a ``DecodeCache``."""

    def __init__(self, model, batch_size: int, max_length: int, mode: Optional[str] = None):
        mode = decode_mode(model.config, mode)
        if not holds_whole_model(model.config):
            raise ValueError("decoding runs on a model built with parallel.pp=1")
        if model.config.sequence_parallel:
            raise ValueError("decoding runs one token per step; build the model with "
                             "sequence_parallel=False for generation")
        self.model, self.mode = model, mode
        self.cache = DecodeCache(model, batch_size, max_length)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.model.head(hidden)[-1]  # [b, vocab shard] at the last position
        if parallel_state.get_tensor_model_parallel_world_size() > 1:
            logits = gather_from_tensor_model_parallel_region(logits)
        return logits

    @torch.no_grad()
    def prefill(self, prompts: List[torch.Tensor]) -> torch.Tensor:
        """Run each row's prompt through the loops in turn (as in training) and fill the cache.
        Returns the next-token logits [b, vocab]."""
        cache, logits = self.cache, []
        for row, prompt in enumerate(prompts):
            if not 0 < len(prompt) < cache.max_length:
                raise ValueError(f"prompt {row} has {len(prompt)} tokens; it needs 1 to "
                                 f"{cache.max_length - 1} (the cache's max_length - 1)")
            states = self.model.run_loops(prompt[None], keep_kv=True)
            for loop, layers_kv in enumerate(states.kv):
                for layer, (keys, values) in enumerate(layers_kv):
                    cache.fill_row(row, loop, layer, keys[0], values[0])
            for loop in range(1, cache.num_loops):  # h_1 .. h_{R-1} at the last position
                cache.saved_hidden[loop - 1, row] = states.hidden[loop][-1, 0]
            cache.lengths[row] = len(prompt)
            logits.append(self._logits(states.hidden[-1]))
        return torch.cat(logits, dim=0)

    def _run_block(self, hidden, rotary, loops):
        for layer_index, layer in enumerate(self.model.decoder.layers):
            hidden, _ = layer(hidden, rotary, None,
                              decode_step=DecodeStep(self.cache, layer_index, loops))
        return hidden

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token per row ([b]) and return the next-token logits [b, vocab]."""
        model, cache, b = self.model, self.cache, self.cache.batch_size
        if int(cache.lengths.max()) >= cache.max_length:
            raise ValueError(f"the decode cache is full ({cache.max_length} tokens)")
        embeddings = model.embedding(input_ids=tokens[:, None], position_ids=None)  # [1, b, h]
        rotary = model._rotary(1, cache.lengths[:, None])  # [1, b, 1, d]
        loops = range(cache.num_loops)

        def loop_input(loop, outputs):
            if loop == 0:
                return embeddings
            if model.config.clp:
                previous = cache.saved_hidden[loop - 1][None]  # h_{r-1} at position t-1
                return model.clp_combine(embeddings, model.per_loop_norm(previous))
            return outputs[loop - 1]  # clp=false: the same position's previous loop

        if self.mode == "parallel":
            rows = torch.cat([loop_input(loop, None) for loop in loops], dim=1)
            outputs = self._run_block(rows, rotary.repeat(1, len(loops), 1, 1), list(loops))
            outputs = list(outputs.split(b, dim=1))
        else:
            outputs = []
            for loop in loops:
                outputs.append(self._run_block(loop_input(loop, outputs), rotary, [loop]))
        if cache.num_loops > 1:
            cache.saved_hidden.copy_(torch.cat(outputs[:-1], dim=0))
        cache.lengths += 1
        return self._logits(outputs[-1])
