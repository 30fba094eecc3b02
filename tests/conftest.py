"""Pytest fixtures and hooks; plain helpers are in tests/fixtures.py.

- Every test process runs torch with one thread, and applies megatron-core's CPU compatibility
  layer at start (the same explicit call the entry points make; a no-op with CUDA).
- `megatron_world`: torch.distributed (gloo, a world of one) and megatron's parallel state at TP=PP=1.
- `problems`, `sandbox`: HumanEval's problems, and a sandbox of each backend (skipped where that
  backend cannot run), once per module.
- `good_dir`, `hf_copy`: a small R=2 export (several shards), once per module, and a copy of it per
  test to damage.
- `cluster`: a real two-node SLURM cluster (tests/local_cluster.py), one per test module.
- `data_cfg`, `prepared`, `tokenizer`: the small stdlib corpus and its tokenizer (tests/fixtures.py),
  built once per process.
- The order in which `make test`'s workers take the test files.
"""

import os

import pytest

from tests.fixtures import THREADS, small_data_config, small_prepared

# The longest files first: `make test` runs `pytest -n 2 --dist loadfile --no-loadscope-reorder`
# (files in this order, not xdist's most-tests-first), and a file of several minutes taken last
# would run alone at the end while the other worker idles.
LONGEST_FIRST = ("test_readme_commands.py", "test_corpus_pipeline_slurm.py", "test_deepspeed.py",
                 "test_checkpoint_robust_kill.py", "test_resharding.py")


def pytest_configure(config):
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = THREADS
    import torch

    from model import cpu_compat

    torch.set_num_threads(int(THREADS))
    cpu_compat.apply()


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: LONGEST_FIRST.index(item.path.name)
               if item.path.name in LONGEST_FIRST else len(LONGEST_FIRST))  # stable: files stay whole


@pytest.fixture(scope="session")
def megatron_world():
    """torch.distributed (gloo, world of 1) and megatron's model-parallel state at TP=PP=1."""
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    from pretrain.distributed import single_process_world

    single_process_world()
    model_parallel_cuda_manual_seed(1234)
    yield


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A real two-node SLURM cluster on this machine (tests/local_cluster.py), for one test module;
    its environment is this process's too, so in-process `launch.slurm` calls reach it. Skipped
    where slurmd cannot run (not root, no apt-get)."""
    from tests.local_cluster import ClusterUnavailable, LocalCluster, ensure_installed

    if os.geteuid() != 0:
        pytest.skip("the local SLURM cluster runs slurmd as root (CI runs as root)")
    try:
        ensure_installed()
    except ClusterUnavailable as err:
        pytest.skip(str(err))
    local = LocalCluster(tmp_path_factory.mktemp("slurm"))
    local.start()
    saved = dict(os.environ)
    os.environ.update(local.env)
    try:
        yield local
    finally:
        os.environ.clear()
        os.environ.update(saved)
        local.stop()


@pytest.fixture
def data_cfg():
    return small_data_config()


@pytest.fixture
def prepared():
    return small_prepared()


@pytest.fixture(scope="session")
def tokenizer():
    """The small corpus's 600-piece CodeTokenizer."""
    from data.tokenizer import CodeTokenizer

    return CodeTokenizer(small_prepared().tokenizer_model)


@pytest.fixture(scope="module")
def good_dir(megatron_world, tmp_path_factory):
    """A small R=2 PLT exported to a Hugging Face directory in shards of 2 MB (once per module)."""
    from tests.fixtures import exported, model_and_config

    model, cfg = model_and_config(num_loops=2)
    return exported(model, cfg, tmp_path_factory.mktemp("good"), max_shard_size="2MB")


@pytest.fixture
def hf_copy(good_dir, tmp_path):
    """A copy of `good_dir` for one test to damage."""
    import shutil

    copy = tmp_path / "hf"
    shutil.copytree(good_dir, copy)
    return copy


@pytest.fixture(scope="module")
def problems():
    from evaluation.problems import load_problems

    return load_problems()


@pytest.fixture(scope="module", params=["bwrap", "unshare"])
def sandbox(request):
    from evaluation.sandbox import Sandbox, SandboxUnavailable
    from tests.fixtures import sandbox_limits

    try:
        return Sandbox(sandbox_limits(), backend=request.param)
    except SandboxUnavailable as error:
        pytest.skip(f"{request.param} is not usable here: {error}")
