"""Pipeline parallelism over the loops: each loop is a virtual pipeline chunk.

With ``parallel.pp = P`` every stage holds L/P layers of the shared block, and the R loops become
R virtual chunks per stage that share those layers (LoopCoder-v2's layout): megatron's interleaved
1F1B schedule runs chunk r of micro-batch m on stage p, sends its output to stage p+1, and the
last stage's chunk r feeds stage 0's chunk r+1. Two things megatron does not know about are ours:

1. Shared weights. Only chunk 0 (the stage's ``PLTModel``) owns parameters; chunks 1..R-1 are
   ``PLTLoopChunk`` views without parameters of their own, so DDP and the optimizer see each
   weight once and its gradient (summed over the loops in one fp32 buffer) is reduced once.
2. Loop 1's K/V. Chunk r >= 1 of a micro-batch needs chunk 0's K/V of the same layers, which live
   on the same stage. ``LoopKVExchange`` hands them over in micro-batch order. Chunk r reads them
   as detached leaves (its backward runs before chunk 0's and must not walk into chunk 0's graph);
   chunk 0's output passes through ``_InjectLoopKVGrads``, which in chunk 0's backward adds the
   gradients the later chunks left on those leaves to the K/V of chunk 0's graph. The result is
   the same gradient as one process running the loops in turn.

Only untied embeddings are supported with pp > 1 (the PLT presets are untied); tied ones would
also need the per-loop use of the embedding on stage 0 reconciled with megatron's copy on the
last stage.
"""

from __future__ import annotations

from typing import List, Optional

import torch

from model.unwrap import unwrap


class _ExchangeEntry:
    def __init__(self, kv):
        self.kv = kv            # loop 1's [(k, v)] per layer of this stage (in chunk 0's graph)
        self.leaves = []        # [(k_leaf, v_leaf)] per layer, one list per later chunk
        self.readers = 0

    def gradients(self):
        """Per K/V tensor, the sum of the gradients the later loops left on their leaves."""
        grads = []
        for layer, (k, v) in enumerate(self.kv):
            for index, tensor in ((0, k), (1, v)):
                parts = [leaves[layer][index].grad for leaves in self.leaves]
                parts = [g for g in parts if g is not None]
                grads.append(torch.stack(parts).sum(0) if parts else None)
        return grads


class _InjectLoopKVGrads(torch.autograd.Function):
    """Identity on chunk 0's output whose backward also sends the later loops' K/V gradients
    into chunk 0's graph (see the module docstring)."""

    @staticmethod
    def forward(ctx, entry, hidden, *kv_tensors):
        ctx.entry = entry
        return hidden.view_as(hidden)

    @staticmethod
    def backward(ctx, grad_hidden):
        return (None, grad_hidden, *ctx.entry.gradients())


class LoopKVExchange:
    """Loop 1's K/V of each micro-batch, from chunk 0 to chunks 1..R-1 of the same stage, in
    micro-batch order (both megatron schedules run each chunk's micro-batches in order)."""

    def __init__(self, num_loops: int):
        self.num_loops = num_loops
        self.reset()

    def reset(self):
        self.entries: List[_ExchangeEntry] = []
        self.reads = [0] * self.num_loops

    def publish(self, hidden: torch.Tensor, kv) -> torch.Tensor:
        if all(e is None for e in self.entries):
            self.reset()  # every earlier micro-batch was read by all loops: a new step begins
        entry = _ExchangeEntry(kv)
        self.entries.append(entry)
        if not torch.is_grad_enabled():
            return hidden
        tensors = [t for pair in kv for t in pair]
        return _InjectLoopKVGrads.apply(entry, hidden, *tensors)

    def take(self, loop_index: int):
        index = self.reads[loop_index]
        self.reads[loop_index] += 1
        if index >= len(self.entries):
            raise RuntimeError(f"loop {loop_index + 1} ran micro-batch {index} before loop 1 did")
        entry = self.entries[index]
        entry.readers += 1
        if entry.readers == self.num_loops - 1:
            self.entries[index] = None  # the autograd node still holds it for the backward
        if not torch.is_grad_enabled():
            return entry.kv
        leaves = [(k.detach().requires_grad_(), v.detach().requires_grad_()) for k, v in entry.kv]
        entry.leaves.append(leaves)
        return leaves


class PLTLoopChunk(torch.nn.Module):
    """Virtual pipeline chunk r >= 1: loop r+1 over the layers of this stage's ``PLTModel``.

    Holds no parameters (the owner is kept outside the module tree), so DDP, the optimizer and
    checkpoints see the stage's weights once, through chunk 0.
    """

    def __init__(self, owner, loop_index: int, ddp_config=None):
        super().__init__()
        self._owner = [owner]  # a list keeps it out of nn.Module's registry
        self.ddp_config = ddp_config  # chunk 0's; megatron's finalize_model_grads reads it
        self.loop_index = loop_index
        self.config = owner.config
        self.model_type = owner.model_type
        self.share_embeddings_and_output_weights = owner.share_embeddings_and_output_weights

    @property
    def owner(self):
        return self._owner[0]

    # megatron's finalize_model_grads looks these up on the first and last chunks.
    @property
    def pre_process(self) -> bool:
        return self.owner.pre_process

    @property
    def post_process(self) -> bool:
        return self.owner.post_process

    def set_input_tensor(self, input_tensor) -> None:
        self.owner.set_input_tensor(input_tensor)

    def finish_grad_sync(self, *args, **kwargs) -> None:
        """Chunk 0's DDP reduces the shared gradients; nothing is left to sync here."""

    def zero_grad_buffer(self) -> None:
        pass

    def forward(self, input_ids: torch.Tensor, position_ids: Optional[torch.Tensor] = None,
                attention_mask: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.owner.forward_loop_chunk(self.loop_index, input_ids, labels)


def holds_whole_model(config) -> bool:
    """Whether a model built with this config holds every layer (pp = 1). A pipeline stage holds
    only its own layers, so what needs a whole forward on one rank (every loop's hidden states, a
    decoded token) cannot run on it: the loop diagnostics, solution scoring and decoding refuse a
    stage, and the trainer skips them with pp > 1 (pretrain/layout.py whole_model_on_each_rank)."""
    return config.pipeline_model_parallel_size == 1


def virtual_pipeline_size(num_loops: int, pipeline_parallel: int) -> Optional[int]:
    """megatron's virtual pipeline size for PLT: the loops are the chunks (None without PP or
    with one loop, where megatron's plain 1F1B schedule runs)."""
    return num_loops if pipeline_parallel > 1 and num_loops > 1 else None


def loop_chunks(chunk0) -> list:
    """The schedule's model list: chunk 0 (the stage's model, as wrapped for DDP) and one view per
    later loop. With pp = 1 this is just [chunk0]: all loops run inside one forward."""
    owner = unwrap(chunk0)
    if owner.config.pipeline_model_parallel_size == 1:
        return [chunk0]
    ddp_config = getattr(chunk0, "ddp_config", None)
    return [chunk0] + [PLTLoopChunk(owner, r, ddp_config) for r in range(1, owner.config.num_loops)]
