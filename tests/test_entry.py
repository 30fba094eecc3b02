"""The entry point as a user meets it: one exit status per class of error with one paragraph and no
traceback (pretrain/errors.py), the resume command a stopped run prints, the batch that adapts to
the data-parallel size, the end-of-run sample under every layout."""

import re
import signal
import subprocess
import sys
import time

import pytest
from omegaconf import OmegaConf

from pretrain.errors import EXIT_CONFIG, EXIT_DATA
from pretrain.signals import EXIT_REQUEUE
from tests.fixtures import (REPO, SMALL, output_of, read_metrics, run_torchrun, run_trainer,
                            small_data, trainer_command, trainer_env)

RUN = SMALL + small_data()


def assert_one_paragraph(result, code, *fragments):
    out = output_of(result)
    assert result.returncode == code, out
    assert "Traceback" not in out, out
    for fragment in fragments:
        assert fragment in out, out


@pytest.mark.parametrize("override, fragment", [
    ("train.max_stepz=3", "max_stepz"),                      # an unknown key
    ("train.seq_length=abc", "train.seq_length"),            # a wrong type
    ("model.num_loops=0", "model.num_loops=0"),              # a value the model refuses
    ("data.fim_rate=1.5", "data.fim_rate=1.5"),              # a probability above 1
    ("checkpoint.verify=fast", "checkpoint.verify='fast'"),
])
def test_config_errors_exit_2_with_one_paragraph(tmp_path, override, fragment):
    assert_one_paragraph(run_trainer(tmp_path, override, *RUN), EXIT_CONFIG, "config error",
                         fragment)


def test_missing_data_exits_3(tmp_path):
    result = run_trainer(tmp_path, f"data.blend=[[1.0,{tmp_path}/nothing]]",
                         f"data.valid_blend=[[1.0,{tmp_path}/nothing_valid]]",
                         f"data.tokenizer_model={tmp_path}/none.model", "train.max_steps=4", *RUN)
    assert_one_paragraph(result, EXIT_DATA, "data error", "none.model")


def test_a_stopped_run_resumes_with_its_own_config_from_the_printed_command(tmp_path):
    """Overrides the defaults do not have (R=3, a multi-line prompt): the printed command
    composes the run's saved config, not today's defaults. Before the stop, SIGUSR2 prints the
    stacks and the run goes on."""
    overrides = ["model.num_loops=3", "train.decay_steps=20", "checkpoint.interval=0",
                 "sample.prompt='def f(x):\n    return'", *RUN]
    process = subprocess.Popen(trainer_command(tmp_path, "train.max_steps=200", *overrides),
                               cwd=REPO, env=trainer_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if (tmp_path / "metrics.jsonl").exists() and len(read_metrics(tmp_path)) >= 3:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGUSR2)
    steps_then = len(read_metrics(tmp_path))
    while time.time() < deadline and len(read_metrics(tmp_path)) < steps_then + 2:
        time.sleep(0.05)
    process.send_signal(signal.SIGUSR1)
    output, _ = process.communicate(timeout=240)
    assert process.returncode == EXIT_REQUEUE, output
    assert re.search(r"^Current thread 0x\w+ \(most recent call first\):\n(  File .*\n)+", output,
                     re.M) and "pretrain/trainer.py" in output, output
    command = f"python -m pretrain.train --config-dir {tmp_path} --config-name resume"
    assert command in output
    before = OmegaConf.load(tmp_path / "config.yaml")
    resumed = subprocess.run([sys.executable, *command.split()[1:], "train.max_steps=12"],
                             cwd=REPO, env=trainer_env(), capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, output_of(resumed)
    assert "resumed from" in output_of(resumed)
    after = OmegaConf.load(tmp_path / "config.yaml")
    assert after.model.num_loops == 3 and after.sample.prompt == "def f(x):\n    return"
    before.train.max_steps = 12
    assert OmegaConf.to_container(after) == OmegaConf.to_container(before)


def test_the_micro_batch_adapts_to_the_data_parallel_size(tmp_path):
    """The default job's batch settings (global 8, micro batch unset) under DP=2: each rank takes
    4 samples a step, no arithmetic asked of the user."""
    result = run_torchrun(tmp_path, 2, *RUN, "train.max_steps=3", "train.global_batch_size=8",
                          "train.micro_batch_size=null")
    assert result.returncode == 0, output_of(result)
    saved = OmegaConf.load(tmp_path / "config.yaml")
    assert saved.train.micro_batch_size == 4
    assert read_metrics(tmp_path)[-1]["consumed_samples"] == 24


@pytest.mark.slow
def test_a_pipeline_run_ends_with_a_skipped_sample_not_a_failure(tmp_path):
    result = run_torchrun(tmp_path, 2, *RUN, "parallel.pp=2", "train.max_steps=3",
                          "sample.max_new_tokens=8")
    assert result.returncode == 0, output_of(result)
    assert "no end-of-run sample: decoding needs the whole model on a rank" in output_of(result)


def test_code_evaluation_during_training_joins_the_step_rows(tmp_path):
    result = run_trainer(tmp_path, *RUN, "train.max_steps=4", "logging.interval=4",
                         "eval.code.interval=2", "eval.code.problems=3")
    assert result.returncode == 0, output_of(result)
    rows = {row["step"]: row for row in read_metrics(tmp_path)}
    for step in (2, 4):
        assert rows[step]["loss"] > 0 and rows[step]["humaneval_nll"] > 0
        assert rows[step]["humaneval_tokens"] > 0
    assert "humaneval_nll" not in rows[1]
    assert "code nll" in output_of(result)


def test_ranks_started_in_different_seconds_name_one_run_folder():
    """torchrun's ranks resolve the default run_dir from their agent's start time (pretrain/config.py
    launch_time): two children started 1.5 s apart by one parent get the same folder name."""
    child = ("from pretrain.config import launch_time; "
             "print(launch_time('%Y-%m-%d_%H-%M-%S'))")
    parent = (f"import subprocess, sys, time\n"
              f"first = subprocess.run([sys.executable, '-c', {child!r}], capture_output=True, text=True)\n"
              f"time.sleep(1.5)\n"
              f"second = subprocess.run([sys.executable, '-c', {child!r}], capture_output=True, text=True)\n"
              f"print(first.stdout.strip(), second.stdout.strip(), first.stderr[-500:], second.stderr[-500:])\n")
    done = subprocess.run([sys.executable, "-c", parent], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=dict(trainer_env(), TORCHELASTIC_RUN_ID="test"))
    first, second = done.stdout.split()[:2]
    assert first == second, done.stdout
