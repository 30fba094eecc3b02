"""One rank of a model-level parallel run: forward+backward of fixed micro-batches through
megatron's schedule, saving this rank's losses and gradients (by global parameter name, tensor-
parallel shards gathered back into full tensors).

    torchrun --nproc_per_node=N -m tests.distributed.model_worker --tp T --pp P --loops R --out DIR
"""

import argparse
import os
import re

import torch
from megatron.core import parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func

from model import PLTModel, cpu_compat
from model.pipeline import loop_chunks, virtual_pipeline_size
from pretrain.distributed import init_model_parallel
from tests.fixtures import small_model_config

# Four layers, so that pipeline stages hold two each; a short window, so that 16 tokens use it.
SHAPE = dict(num_layers=4, max_position_embeddings=64, swa_window=4)
SEQ, MICRO_BATCH, MICRO_BATCHES = 16, 2, 4


def global_name(name: str, owner: PLTModel) -> str:
    """decoder.layers.i.* on this stage -> decoder.layers.<global index>.*"""
    match = re.match(r"decoder\.layers\.(\d+)\.(.*)", name)
    if not match:
        return name
    layer = owner.decoder.layers[int(match.group(1))]
    return f"decoder.layers.{layer.layer_number - 1}.{match.group(2)}"


def full_tensor(param, tensor):
    """Gather a tensor-parallel shard along the dimension megatron split it on. With a stride
    (SwiGLU's fc1 holds [gate_r; up_r] on rank r), each shard is ``stride`` pieces, and the full
    tensor is piece 0 of every rank, then piece 1 of every rank, ..."""
    if not getattr(param, "tensor_model_parallel", False) or (
            parallel_state.get_tensor_model_parallel_world_size() == 1):
        return tensor.clone()
    group = parallel_state.get_tensor_model_parallel_group()
    shards = [torch.empty_like(tensor) for _ in range(torch.distributed.get_world_size(group))]
    torch.distributed.all_gather(shards, tensor.contiguous(), group=group)
    stride, dim = getattr(param, "partition_stride", 1), param.partition_dim
    pieces = [shard.chunk(stride, dim=dim) for shard in shards]
    return torch.cat([rank_pieces[s] for s in range(stride) for rank_pieces in pieces], dim=dim)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--sp", type=int, default=0)
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--loops", type=int, default=2)
    parser.add_argument("--shared-kv", type=int, default=1)
    parser.add_argument("--gate-input", default="hidden")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    cpu_compat.apply()
    torch.distributed.init_process_group("gloo")
    vpp = virtual_pipeline_size(args.loops, args.pp)  # the layout's rule (pretrain/layout.py)
    init_model_parallel(args.tp, args.pp, vpp, seed=0)
    torch.manual_seed(0)
    config = small_model_config(**SHAPE, num_loops=args.loops, shared_kv=bool(args.shared_kv),
                                gate_input=args.gate_input).build(
        tensor_parallel=args.tp, pipeline_parallel=args.pp, virtual_pipeline_parallel=vpp,
        sequence_parallel=bool(args.sp))
    stage = PLTModel(config)
    chunks = loop_chunks(stage)

    gen = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, 128, (MICRO_BATCH, SEQ + 1), generator=gen)
               for _ in range(MICRO_BATCHES)]

    def forward_step(data_iterator, chunk):
        tokens = next(data_iterator)
        output = chunk(tokens[:, :-1], labels=tokens[:, 1:])
        return output, lambda out: (out.float().mean(), {"loss": out.float().mean().detach()})

    iterators = [iter(batches) for _ in chunks]
    outputs = get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=iterators if len(chunks) > 1 else iterators[0],
        model=chunks, num_microbatches=MICRO_BATCHES, seq_length=SEQ, micro_batch_size=MICRO_BATCH,
        forward_only=False)
    if args.sp:
        # megatron's finalize step: norms replicated over TP see a slice of the sequence each.
        for p in stage.parameters():
            if getattr(p, "sequence_parallel", False) and p.grad is not None:
                torch.distributed.all_reduce(p.grad, group=parallel_state.get_tensor_model_parallel_group())
    rank = torch.distributed.get_rank()
    first_tp_rank = parallel_state.get_tensor_model_parallel_rank() == 0
    grads = {global_name(n, stage): full_tensor(p, p.grad) for n, p in stage.named_parameters()
             if p.grad is not None}
    torch.save({
        "losses": [float(o["loss"]) for o in outputs] if first_tp_rank else [],
        "grads": grads if first_tp_rank else {},
    }, os.path.join(args.out, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
