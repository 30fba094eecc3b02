"""The layout dry run (scripts/dry_run_layout.py): one rank of a large world built on the meta device
under torch's fake process group. Each case runs in a fresh process, because the test session
already holds a real (gloo) process group and a process has only one default group."""

import os
import subprocess
import sys

import pytest

from tests.fixtures import REPO, subprocess_env


def dry_run(*args):
    return subprocess.run([sys.executable, "scripts/dry_run_layout.py", *args], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=600)


def test_a_7b_tp2_rank_of_64_builds_and_matches_the_planner():
    result = dry_run("model=plt_7b", "train=plt_7b", "parallel=node8_tp2", "--world", "64",
                     "--rank", "5")
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "rank 5 of 64: tp rank 1/2, pp stage 0/1, dp rank 2/32" in out
    assert "(equal)" in out
    # tensor parallel 2 halves the vocab-parallel embedding and the column-parallel fc1
    assert "3,807,984,920 parameters" in out


def test_a_layout_that_does_not_divide_the_layers_fails_naming_the_key():
    result = dry_run("model=plt_7b", "train=plt_7b", "parallel=node8_tp2", "parallel.pp=4",
                     "--world", "64", "--rank", "0")
    assert result.returncode == 2
    assert "parallel.pp=4 does not divide model.num_layers=14" in result.stderr


def test_a_pipeline_stage_builds_its_own_layers_or_the_model_says_why():
    result = dry_run("model=plt_tiny", "parallel.tp=2", "parallel.pp=2", "parallel.sequence_parallel=true",
                     "train.global_batch_size=16", "--world", "8", "--rank", "7", "--params")
    if result.returncode == 2:  # a model without pipeline support refuses with its own message
        assert "pp" in result.stderr and "layout error" in result.stderr
        pytest.skip("the model does not build pp > 1 here: " + result.stderr.strip()[-200:])
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "pp stage 1/2" in out and "(equal)" in out
    assert "output_layer.weight" in out and "word_embeddings" not in out  # last stage: the head only
