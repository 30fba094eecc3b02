"""Process groups: torchrun, SLURM (srun) or a single process; then megatron's parallel state.

    world = init_distributed(layout, seed, cfg.parallel.backend)   # + megatron parallel_state
    # or in two steps (the trainer: the config is resolved once the processes met)
    world = start_processes(cfg.parallel.backend)
    init_model_parallel(layout.tp, layout.pp, layout.vpp, seed)
    ...
    shutdown_distributed()

    world = single_process_world()     # tools and tests: a world of one at TP=PP=1, if none yet

The rank and world come from torchrun's RANK/WORLD_SIZE/LOCAL_RANK, else from srun's
SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID (MASTER_ADDR/MASTER_PORT from the environment, else the first
host of the job and a port derived from the job id: pretrain/rendezvous.py), else a world of one
that needs no port at all. gloo on CPU, NCCL on GPU (parallel.backend overrides). Both entries apply
megatron-core's CPU compatibility layer first when CUDA is absent (model/cpu_compat.py): every
process that runs megatron code starts here.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Optional

import torch

from model import cpu_compat
from pretrain.rendezvous import check_environment, slurm_rendezvous

TIMEOUT = datetime.timedelta(minutes=30)


@dataclass
class World:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun or SLURM, else (0, 1, 0)."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0))
    return 0, 1, 0


def _start_process_group(backend: str, rank: int, world_size: int, device: torch.device) -> None:
    # NCCL binds each rank's communicator to its own GPU; left to guess, torch picks a device from
    # the global rank (and warns that a node whose rank-to-GPU mapping differs can hang).
    device_id = device if backend == "nccl" else None
    if world_size == 1:
        # A world of one needs no rendezvous: an in-memory store, so no port can collide.
        torch.distributed.init_process_group(backend, store=torch.distributed.HashStore(),
                                             rank=0, world_size=1, timeout=TIMEOUT,
                                             device_id=device_id)
        return
    # A multi-node SLURM job whose rendezvous resolves to loopback would hang in the first
    # collective: fail here, before any, with the reason.
    check_environment()
    if "RANK" not in os.environ:  # srun: torch reads the rendezvous from these
        os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = slurm_rendezvous()
    torch.distributed.init_process_group(backend, init_method="env://", rank=rank,
                                         world_size=world_size, timeout=TIMEOUT,
                                         device_id=device_id)


def init_model_parallel(tp: int, pp: int, vpp: Optional[int], seed: int, **kwargs) -> None:
    """megatron's TP/PP/DP groups and its seeded RNG tracker, for a layout's tp, pp and vpp
    (pretrain/layout.py ParallelLayout: with pipeline parallelism the PLT loops are the virtual
    pipeline chunks)."""
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
        virtual_pipeline_model_parallel_size=vpp, **kwargs)
    model_parallel_cuda_manual_seed(seed)


def start_processes(backend: str = "auto") -> World:
    """Start torch.distributed's default group (torchrun, srun or a world of one), before the
    config is resolved: the trainer broadcasts rank 0's run_dir over it (pretrain/train.py).
    `backend`: parallel.backend; a value that is not nccl or gloo counts as auto here, and
    validate() refuses it, naming the key."""
    cpu_compat.apply()
    rank, world_size, local_rank = env_world()
    use_cuda = torch.cuda.is_available()
    if backend not in ("nccl", "gloo"):
        backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    device = torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")
    if not torch.distributed.is_initialized():
        _start_process_group(backend, rank, world_size, device)
    return World(rank, world_size, local_rank, device, backend)


def init_distributed(layout, seed: int, backend: str = "auto") -> World:
    """Start torch.distributed and megatron's TP/PP/DP groups for `layout` (a ParallelLayout,
    pretrain/layout.py, of this world's size); seed megatron's RNG tracker. `backend`:
    parallel.backend (auto: nccl on a GPU, gloo on a CPU)."""
    world = start_processes(backend)
    if layout.world_size != world.world_size:  # derived for another world: the caller's bug
        raise RuntimeError(f"the layout is for {layout.world_size} processes, the world has "
                           f"{world.world_size}")
    init_model_parallel(layout.tp, layout.pp, layout.vpp, seed)
    return world


def single_process_world(seed: int = 1234) -> World:
    """A world of one (in-memory store; NCCL on a GPU, gloo otherwise) and megatron's parallel
    state at TP=PP=1, unless the caller set them up already: what tools, benchmarks and tests need
    to build a model."""
    from megatron.core import parallel_state

    cpu_compat.apply()
    use_cuda = torch.cuda.is_available()
    backend = "nccl" if use_cuda else "gloo"
    device = torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")
    if not torch.distributed.is_initialized():
        _start_process_group(backend, 0, 1, device)
    if not parallel_state.model_parallel_is_initialized():
        init_model_parallel(1, 1, None, seed)
    return World(torch.distributed.get_rank(), torch.distributed.get_world_size(), 0, device,
                 torch.distributed.get_backend())


def shutdown_distributed() -> None:
    """Leave no global state behind (a Hydra sweep runs its jobs one after another in one process)."""
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def free_port() -> int:
    """A TCP port free on this host now (for a local rendezvous: tests, benchmarks)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def all_reduce_max(value: float | int | bool) -> float:
    """The maximum of a scalar over all ranks (used to agree on stopping and on failures)."""
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return float(value)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else "cpu"
    tensor = torch.tensor([float(value)], device=device)
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return float(tensor.item())


def broadcast_object(obj, src: int = 0):
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return obj
    holder = [obj]
    torch.distributed.broadcast_object_list(holder, src=src)
    return holder[0]
