"""How a run starts and when it saves (pretrain/checkpoint/checkpointer.py: `load()`, `save()`),
and the one rule for what is due at a step (pretrain/intervals.py)."""

import os

import pytest

from pretrain.errors import EXIT_CONFIG
from pretrain.intervals import due
from tests.fixtures import SMALL, output_of, run_trainer, small_data

RUN = SMALL + small_data() + ["train.decay_steps=20", "checkpoint.keep=0"]


@pytest.mark.parametrize("interval, step, last_step, expected", [
    (0, 10, False, False), (0, 10, True, False),        # 0: never, not even at the last step
    (5, 10, False, True), (5, 7, False, False),
    (5, 7, True, True),                                 # the last step, wherever the interval falls
    (1, 3, False, True),
])
def test_due_every_interval_and_at_the_last_step(interval, step, last_step, expected):
    assert due(interval, step, last_step) is expected


def test_a_checkpoint_that_does_not_fit_is_refused_before_anything_moves(tmp_path):
    """A rollback (checkpoint.resume=an earlier iter_ folder) with a model that does not match it:
    exit 2 naming the field, and the later checkpoints stay where they were (nothing set aside),
    `latest` too. Saves fall on checkpoint.interval and, with save_final, on the last step."""
    first = run_trainer(tmp_path, "train.max_steps=5", "checkpoint.interval=2", *RUN)
    assert first.returncode == 0, output_of(first)
    root = tmp_path / "checkpoints"
    assert sorted(n for n in os.listdir(root) if n.startswith("iter_")) == [
        "iter_0000002", "iter_0000004", "iter_0000005"]
    refused = run_trainer(tmp_path, f"checkpoint.resume={root / 'iter_0000002'}",
                          "train.max_steps=8", "model.clp_hidden_scale=0.053", *RUN)
    assert refused.returncode == EXIT_CONFIG, output_of(refused)
    assert "has clp_hidden_scale=1.0 but the config says 0.053" in output_of(refused)
    assert sorted(os.listdir(root)) == ["iter_0000002", "iter_0000004", "iter_0000005", "latest"]
    assert (root / "latest").read_text() == "iter_0000005\n"


def test_an_unknown_backend_is_a_config_error_though_the_processes_meet_first(tmp_path):
    """The processes meet before the config is resolved (rank 0's run_dir is broadcast, then the
    config is validated once): a parallel.backend torch does not know must still be refused by
    validate() with exit 2 naming the key, not fail inside torch.distributed."""
    result = run_trainer(tmp_path, "parallel.backend=mpi", *RUN)
    assert result.returncode == EXIT_CONFIG, output_of(result)
    assert "parallel.backend='mpi'; use auto, nccl or gloo" in output_of(result)
    assert "Traceback" not in output_of(result)
