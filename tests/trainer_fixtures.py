"""Helpers for tests/test_trainer*.py, test_config*.py, test_checkpoint*.py: run the trainer the way a
user does (`python -m pretrain.train ...` in a subprocess, so Hydra, torch.distributed and megatron's
global state start fresh each time) on a small corpus prepared once per pytest process."""

import atexit
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@functools.lru_cache(maxsize=None)
def data_cache_dir() -> str:
    """One data cache for every trainer test of this pytest process (module-level, not a fixture,
    so that several test modules share it): the tokenizer and shards are built by the first run."""
    path = tempfile.mkdtemp(prefix="loopcoder-test-trainer-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return os.path.join(path, "cache")


def small_data() -> list:
    """40 stdlib files and a 600-piece tokenizer: built in seconds."""
    return [f"data.cache_dir={data_cache_dir()}", "data.stdlib_max_files=40", "data.vocab_size=600"]


# A model of ~0.1M parameters: a step takes milliseconds, so a run is dominated by start-up (~5 s).
SMALL_MODEL = ["model.num_layers=2", "model.hidden_size=64", "model.num_attention_heads=4",
               "model.num_query_groups=2", "model.ffn_hidden_size=176", "model.vocab_size=640"]
SMALL_TRAIN = ["train.seq_length=64", "train.global_batch_size=4", "train.micro_batch_size=2",
               "train.warmup_steps=2", "logging.interval=1", "eval.interval=0",
               "logging.wandb.mode=disabled", "sample.max_new_tokens=0"]
SMALL = SMALL_MODEL + SMALL_TRAIN


def trainer_env() -> dict:
    env = dict(os.environ)
    # One thread: the same arithmetic in every run, and no thread oversubscription on a loaded
    # 2-core machine (where two OpenMP threads can make a small matmul 10x slower).
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", WANDB_MODE="disabled",
               HYDRA_FULL_ERROR="1")
    return env


def trainer_command(run_dir, *overrides, multirun=False) -> list:
    return [sys.executable, "-m", "pretrain.train", *(["-m"] if multirun else []),
            f"run_dir={run_dir}", *overrides]


def run_trainer(run_dir, *overrides, multirun=False, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(trainer_command(run_dir, *overrides, multirun=multirun), cwd=REPO,
                          env=trainer_env(), capture_output=True, text=True, timeout=timeout)


def _rows(run_dir) -> list:
    with open(os.path.join(run_dir, "metrics.jsonl")) as stream:
        return [json.loads(line) for line in stream if line.strip()]


def read_metrics(run_dir) -> list:
    """The step rows of metrics.jsonl (loss, lr, ...); diagnostics rows carry a `loop` key."""
    return [row for row in _rows(run_dir) if "loop" not in row]


def read_diagnostics(run_dir) -> list:
    return [row for row in _rows(run_dir) if "loop" in row]


def losses_by_step(run_dir) -> dict:
    return {row["step"]: row["loss"] for row in read_metrics(run_dir)}


def output_of(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr
