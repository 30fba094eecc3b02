"""Shared pytest fixtures: a one-process gloo world for megatron-core's parallel state; the order
in which `make test`'s workers take the test files."""

import os
import socket

import pytest
import torch


# The longest files first: `make test` runs `pytest -n 2 --dist loadfile --no-loadscope-reorder`
# (files in this order, not xdist's most-tests-first), and a file of several minutes taken last
# would run alone at the end while the other worker idles.
LONGEST_FIRST = ("test_checkpoint_robust_kill.py", "test_resharding.py", "test_deepspeed.py")


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: LONGEST_FIRST.index(item.path.name)
               if item.path.name in LONGEST_FIRST else len(LONGEST_FIRST))  # stable: files stay whole


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def megatron_world():
    """torch.distributed (gloo, world of 1) and megatron's model-parallel state at TP=PP=1."""
    import model  # noqa: F401  (applies the CPU compatibility layer when CUDA is absent)
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    if not torch.distributed.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ["MASTER_PORT"] = str(free_port())
        torch.distributed.init_process_group("gloo", rank=0, world_size=1)
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(1, 1)
    model_parallel_cuda_manual_seed(1234)
    yield
