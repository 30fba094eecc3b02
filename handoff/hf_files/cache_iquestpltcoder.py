"""The decoding cache of the LoopCoder transformers implementation (modeling_iquestpltcoder.py),
written by loopcoder's export: loop 1's K/V for the whole sequence, per later loop only the last
window + 1 tokens' K/V, and the last output of every loop but the last. Self-contained (torch and
transformers only), copied into every exported directory.
"""

from typing import List, Optional

import torch
from transformers.cache_utils import Cache


class PLTCache(Cache):
    """What decoding keeps (see the module docstring). Positions are per row; -1 marks padding."""

    def __init__(self, num_layers, num_loops, window):
        self.layers = []  # transformers' Cache API; this cache keeps its own tensors below
        self.num_loops, self.window_slots = num_loops, window + 1
        self.full_k = {}  # (layer, loop) -> [b, kv, T, d]: loop 1's (every loop's without
        self.full_v = {}  # shared K/V)
        self.ring_k = {}  # (layer, loop) -> [b, kv, <= window + 1, d] for loops >= 2
        self.ring_v = {}
        self.full_pos: Optional[torch.Tensor] = None   # [b, T] positions of loop 1's keys
        self.ring_pos: Optional[torch.Tensor] = None   # [b, <=w+1]
        self.saved_hidden: Optional[torch.Tensor] = None  # [R-1, b, hidden]: h_1..h_{R-1} at t-1

    # -- transformers' Cache interface (what generate() reads) --------------------------------
    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0 if self.full_pos is None else self.full_pos.shape[1]

    def get_max_cache_shape(self, layer_idx: int = 0) -> int:
        return -1

    @property
    def is_compileable(self) -> bool:
        return False

    @property
    def is_croppable(self) -> bool:
        return False

    @property
    def is_linear(self) -> List[bool]:
        return [False]

    @property
    def is_sliding(self) -> List[bool]:
        return [False]

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        def pick(t, dim):
            return None if t is None else t.index_select(dim, beam_idx.to(t.device))
        self.full_k = {key: pick(t, 0) for key, t in self.full_k.items()}
        self.full_v = {key: pick(t, 0) for key, t in self.full_v.items()}
        self.ring_k = {key: pick(t, 0) for key, t in self.ring_k.items()}
        self.ring_v = {key: pick(t, 0) for key, t in self.ring_v.items()}
        self.full_pos, self.ring_pos = pick(self.full_pos, 0), pick(self.ring_pos, 0)
        self.saved_hidden = pick(self.saved_hidden, 1)

    # -- PLT ----------------------------------------------------------------------------------
    def add_positions(self, positions: torch.Tensor) -> None:
        """Positions of the tokens this forward appends (before any layer writes their K/V)."""
        self.full_pos = positions if self.full_pos is None else torch.cat([self.full_pos, positions], 1)
        self.ring_pos = positions if self.ring_pos is None else torch.cat([self.ring_pos, positions], 1)

    def write_full(self, layer, loop, k, v):
        if (layer, loop) in self.full_k:
            k = torch.cat([self.full_k[layer, loop], k], 2)
            v = torch.cat([self.full_v[layer, loop], v], 2)
        self.full_k[layer, loop], self.full_v[layer, loop] = k, v
        return k, v

    def write_rings(self, layer, later_loops, k, v):
        """Append k, v [len(later_loops), b, kv, s, d] of loops >= 2 to their rings; returns each
        loop's ring with the new tokens, stacked the same way."""
        keys, values = [], []
        for j, loop in enumerate(later_loops):
            if (layer, loop) in self.ring_k:
                self.ring_k[layer, loop] = torch.cat([self.ring_k[layer, loop], k[j]], 2)
                self.ring_v[layer, loop] = torch.cat([self.ring_v[layer, loop], v[j]], 2)
            else:
                self.ring_k[layer, loop], self.ring_v[layer, loop] = k[j], v[j]
            keys.append(self.ring_k[layer, loop])
            values.append(self.ring_v[layer, loop])
        return torch.stack(keys), torch.stack(values)

    def trim_rings(self) -> None:
        """After a forward: keep the last window + 1 tokens of every later loop."""
        if self.ring_pos is None or self.ring_pos.shape[1] <= self.window_slots:
            return
        self.ring_pos = self.ring_pos[:, -self.window_slots:]
        self.ring_k = {key: t[:, :, -self.window_slots:] for key, t in self.ring_k.items()}
        self.ring_v = {key: t[:, :, -self.window_slots:] for key, t in self.ring_v.items()}


def visible_keys(key_pos, query_pos, window=None):
    """[b, q, k] booleans: key at a real position <= the query's (and within the window). A query
    that sees no key (padding) sees every key instead, so softmax never divides by zero."""
    k, q = key_pos[:, None, :], query_pos[:, :, None]
    allowed = (k >= 0) & (k <= q)
    if window is not None:
        allowed &= k >= q - window
    return allowed | ~allowed.any(-1, keepdim=True)
