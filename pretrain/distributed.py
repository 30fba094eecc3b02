"""Process groups: torchrun, SLURM (srun) or a single process; then megatron's parallel state.

    world = init_distributed(cfg.parallel, seed, cfg.model.num_loops)   # + megatron parallel_state
    ...
    shutdown_distributed()

The rank and world come from torchrun's RANK/WORLD_SIZE/LOCAL_RANK, else from srun's
SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID (MASTER_ADDR/MASTER_PORT from the environment, else the first
host of the job and a port derived from the job id), else a world of one that needs no port at all.
gloo on CPU, NCCL on GPU (parallel.backend overrides).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch

import model  # noqa: F401  (the megatron-core CPU compatibility layer, when CUDA is absent)
from megatron.core import parallel_state
from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

from launch.rendezvous import check_environment, rendezvous_address
from model.pipeline import virtual_pipeline_size


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


def _slurm_master() -> tuple[str, str]:
    """Rendezvous of an srun-per-rank job: the first node's address (launch/rendezvous.py, which
    also refuses loopback in a multi-node job) and one port per job id (a requeued job, same id,
    gets its port back; launch/script.py exports the same formula)."""
    port = os.environ.get("MASTER_PORT") or str(20000 + int(os.environ.get("SLURM_JOB_ID", 0)) % 20000)
    return rendezvous_address(), port


def init_distributed(parallel, seed: int, num_loops: int = 1) -> World:
    """Start torch.distributed and megatron's TP/PP/DP groups; seed megatron's RNG tracker.

    With pipeline parallelism the PLT loops are megatron's virtual pipeline chunks
    (model/pipeline.py), so the virtual pipeline size is ``num_loops``.
    """
    rank, world_size, local_rank = env_world()
    use_cuda = torch.cuda.is_available()
    backend = parallel.backend if parallel.backend != "auto" else ("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    device = torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu")
    if not torch.distributed.is_initialized():
        timeout = datetime.timedelta(minutes=30)
        if world_size == 1:
            # A world of one needs no rendezvous: an in-memory store, so no port can collide.
            torch.distributed.init_process_group(backend, store=torch.distributed.HashStore(),
                                                 rank=0, world_size=1, timeout=timeout)
        else:
            # A multi-node SLURM job whose rendezvous resolves to loopback would hang in the
            # first collective: fail here, before any, with the reason.
            check_environment()
            if "RANK" not in os.environ:  # srun: torch reads the rendezvous from these
                os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = _slurm_master()
            torch.distributed.init_process_group(backend, init_method="env://", rank=rank,
                                                 world_size=world_size, timeout=timeout)
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=parallel.tp,
        pipeline_model_parallel_size=parallel.pp,
        virtual_pipeline_model_parallel_size=virtual_pipeline_size(num_loops, parallel.pp),
    )
    model_parallel_cuda_manual_seed(seed)
    return World(rank, world_size, local_rank, device, backend)


def shutdown_distributed() -> None:
    """Leave no global state behind (a Hydra sweep runs its jobs one after another in one process)."""
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def all_reduce_max(value: float | int | bool) -> float:
    """The maximum of a scalar over all ranks (used to agree on stopping)."""
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
