"""What the tests share: the repository's path, free ports, the environment of the processes they
start, the small model, data and trainer settings, and running the trainer as a user runs it.

Pytest fixtures (megatron_world, data_cfg, prepared) live in tests/conftest.py; everything here is a
plain function or constant, imported as `from tests.fixtures import ...`.

Threads: every process a test starts runs torch with ONE thread (`subprocess_env`), and the test
processes themselves too (tests/conftest.py). On a 2-core machine several processes each spinning
torch's default threads wait on each other (steps 9-11x slower); one thread also gives every run
the same arithmetic, which the bitwise resume tests rely on.
"""

import atexit
import contextlib
import dataclasses
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import torch

from pretrain.distributed import free_port  # noqa: F401  (re-exported for the tests)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THREADS = "1"


def subprocess_env(**extra) -> dict:
    """The environment of every process a test starts: one torch thread, no warnings noise, no
    wandb, Hydra's full errors."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=THREADS, MKL_NUM_THREADS=THREADS, PYTHONWARNINGS="ignore",
               WANDB_MODE="disabled", HYDRA_FULL_ERROR="1", **extra)
    return env


# -- the small model -----------------------------------------------------------------------------
# ~0.1M parameters: a step takes milliseconds, so a run is dominated by start-up (~5 s).
SMALL_SHAPE = dict(num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=2,
                   ffn_hidden_size=128)


def small_model_config(**overrides):
    """A ModelConfig of the small shape (vocab 128, torch attention) for in-process model tests."""
    from model import ModelConfig

    fields = dict(SMALL_SHAPE, vocab_size=128, max_position_embeddings=512, attention_backend="torch")
    return ModelConfig(**{**fields, **overrides})


def build_small(seed: int = 0, randomize_gate: bool = True, **overrides):
    """A small PLT model (fp32, eval mode, deterministic weights). The gate starts at zero by
    design (g = 0.5 everywhere); tests that must see the gate's input reach the output give it
    random weights with ``randomize_gate``."""
    import torch

    from model import PLTModel

    torch.manual_seed(seed)
    model = PLTModel(small_model_config(**overrides).build())
    if randomize_gate:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "linear_gate" in name:
                    param.normal_(0.0, 0.5)
    return model.eval()


def as_overrides(prefix: str, fields: dict) -> list:
    return [f"{prefix}.{key}={value}" for key, value in fields.items()]


# -- the small data ------------------------------------------------------------------------------
DATA_SEQ_LENGTH = 32


@functools.lru_cache(maxsize=None)
def _workdir(kind: str) -> str:
    """One temp folder per kind and pytest process, removed at exit (module-level, not a fixture,
    so that several test modules share what is built in it)."""
    path = tempfile.mkdtemp(prefix=f"loopcoder-test-{kind}-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def small_data_config(**overrides):
    """A DataConfig of 40 stdlib files and a 600-piece tokenizer, two shards (built in seconds)."""
    from data.config import DataConfig

    fields = dict(cache_dir=f"{_workdir('data')}/cache", vocab_size=600, stdlib_max_files=40,
                  num_shards=2, num_workers=2, stdlib_valid_fraction=0.1)
    fields.update(overrides)
    return DataConfig(**fields)


@functools.lru_cache(maxsize=None)
def small_prepared():
    from data.prepare import prepare_data

    return prepare_data(small_data_config(), DATA_SEQ_LENGTH)


# -- the trainer, as a user runs it ----------------------------------------------------------------
def data_cache_dir() -> str:
    """One data cache for every trainer run of this pytest process: built by the first run."""
    return os.path.join(_workdir("trainer"), "cache")


def small_data() -> list:
    """40 stdlib files and a 600-piece tokenizer: built in seconds."""
    return [f"data.cache_dir={data_cache_dir()}", "data.stdlib_max_files=40", "data.vocab_size=600"]


SMALL_MODEL = as_overrides("model", dict(SMALL_SHAPE, vocab_size=640))
SMALL_TRAIN = ["train.seq_length=64", "train.global_batch_size=4", "train.micro_batch_size=2",
               "train.warmup_steps=2", "logging.interval=1", "eval.interval=0",
               "logging.wandb.mode=disabled", "sample.max_new_tokens=0"]
SMALL = SMALL_MODEL + SMALL_TRAIN


def trainer_env() -> dict:
    return subprocess_env()


def trainer_command(run_dir, *overrides, multirun=False) -> list:
    return [sys.executable, "-m", "pretrain.train", *(["-m"] if multirun else []),
            f"run_dir={run_dir}", *overrides]


def run_trainer(run_dir, *overrides, multirun=False, timeout=300,
                env=None) -> subprocess.CompletedProcess:
    """The trainer as a user runs it; ``env``: variables to add to trainer_env()'s."""
    return subprocess.run(trainer_command(run_dir, *overrides, multirun=multirun), cwd=REPO,
                          env={**trainer_env(), **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def torchrun_command(nproc: int, *args) -> list:
    """`python -m torch.distributed.run --nproc_per_node=N --master_port=<free> ARGS`."""
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
            f"--master_port={free_port()}", *args]


def run_torchrun(run_dir, nproc: int, *overrides, timeout=900) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node=N -m pretrain.train run_dir=... OVERRIDES`, as a user runs it."""
    return subprocess.run(torchrun_command(nproc, "-m", "pretrain.train", f"run_dir={run_dir}",
                                           *overrides),
                          cwd=REPO, env=trainer_env(), capture_output=True, text=True,
                          timeout=timeout)


def _rows(run_dir) -> list:
    """metrics.jsonl as every reader reads it: a torn last line is dropped, null is a missing value."""
    from pretrain.run_files import read_rows

    return read_rows(os.path.join(run_dir, "metrics.jsonl"))


def read_metrics(run_dir) -> list:
    """The step rows of metrics.jsonl (loss, lr, ...); diagnostics rows carry a `loop` key."""
    return [row for row in _rows(run_dir) if "loop" not in row]


def read_diagnostics(run_dir) -> list:
    return [row for row in _rows(run_dir) if "loop" in row]


def losses_by_step(run_dir) -> dict:
    return {row["step"]: row["loss"] for row in read_metrics(run_dir)}


def output_of(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


# -- attacks on checkpoints ----------------------------------------------------------------------
class Exploit:
    """A pickle that runs `touch MARKER` when it is unpickled: no loader may ever create MARKER."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def reseal(folder):
    """What an attacker who can write a checkpoint folder does after swapping a file: fix its
    checksums (so that the loaders themselves are what is tested)."""
    from pretrain.checkpoint.integrity import CHECKSUMS_FILE, file_digest

    manifest_path = os.path.join(folder, CHECKSUMS_FILE)
    with open(manifest_path) as stream:
        manifest = json.load(stream)
    for name in manifest["files"]:
        manifest["files"][name] = file_digest(os.path.join(folder, name))
    with open(manifest_path, "w") as stream:
        json.dump(manifest, stream)


# -- the hand-off (tests/test_handoff_*.py) --------------------------------------------------------
# A small PLT written as a loopcoder checkpoint and exported. The published families' gates and
# norms start at fixed values (gate 0, norms 1); these models get random ones, so that every tensor
# reaches the output and a mix-up of two would show.
HANDOFF_VOCAB = 600  # the small test tokenizer's ids (a random model then only emits ids it can decode)


def model_and_config(seed=0, **overrides):
    """(PLTModel in eval mode, its ModelConfig): the small shape, random gates and norms."""
    fields = dict(vocab_size=HANDOFF_VOCAB, swa_window=4, clp_emb_scale=0.7, clp_hidden_scale=0.3)
    fields.update(overrides)
    model = build_small(seed=seed, **fields)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(seed + 100)
        for name, param in model.named_parameters():
            if "layernorm" in name or "gate_norm" in name:
                param.copy_(1.0 + 0.2 * torch.randn(param.shape, generator=generator))
    return model, small_model_config(**fields)


def weights_of(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()
            if not k.endswith("_extra_state")}


def write_checkpoint(model, model_cfg, root, step=3) -> str:
    """`root/iter_<step>` + `latest`: a weights-only megatron checkpoint as the Checkpointer writes it,
    with the small test tokenizer (what scripts/export_hf reads)."""
    from omegaconf import OmegaConf

    from pretrain.checkpoint import files
    from pretrain.checkpoint.weights import staged_checkpoint, write_weights_only

    fields = dataclasses.asdict(model_cfg)
    with staged_checkpoint(str(root), step) as tmp:
        write_weights_only(tmp, weights_of(model), model_cfg, {"step": step, "model": fields},
                           "megatron", config_yaml=OmegaConf.to_yaml({"model": fields}))
        shutil.copyfile(small_prepared().tokenizer_model, os.path.join(tmp, files.TOKENIZER_FILE))
    return os.path.join(root, files.iter_name(step))


def exported(model, model_cfg, tmp_path, dtype="fp32", **kwargs) -> str:
    from handoff.export import export_checkpoint

    write_checkpoint(model, model_cfg, str(tmp_path / "checkpoint"))
    return export_checkpoint(str(tmp_path / "checkpoint"), str(tmp_path / "hf"), dtype=dtype,
                             **kwargs)


def hf_tensors(hf_dir) -> dict:
    from handoff.safetensors_files import SafetensorsReader

    reader = SafetensorsReader(str(hf_dir))
    return {name: reader.get(name) for name in reader.names()}


def assert_bitwise_equal(got: dict, expected: dict):
    assert sorted(got) == sorted(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype, name
        assert torch.equal(got[name], tensor), name


# -- a real full disk ---------------------------------------------------------------------------
@contextlib.contextmanager
def tiny_tmpfs(folder, size: str):
    """`folder` mounted as a tmpfs of `size` ("64k"): a real disk to fill, where mounting works
    (root); the test is skipped elsewhere (injected ENOSPC tests cover the logic there)."""
    import pytest

    os.makedirs(folder, exist_ok=True)
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True)
    if made.returncode:
        pytest.skip("mounting a tmpfs needs root; the injected ENOSPC tests cover the logic")
    try:
        yield folder
    finally:
        for _ in range(20):  # a writer process megatron started may still be closing its files
            if subprocess.run(["umount", str(folder)], capture_output=True).returncode == 0:
                break
            time.sleep(0.25)
        else:
            subprocess.run(["umount", "--lazy", str(folder)], check=True)


# -- the code evaluation's sandbox ------------------------------------------------------------------
def sandbox_limits():
    """What the sandbox tests give each sample: 30 s and 1 GiB."""
    from evaluation.sandbox import Limits

    return Limits(timeout_s=30.0, memory_bytes=1 << 30)
