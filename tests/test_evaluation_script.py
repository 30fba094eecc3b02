"""`python -m scripts.evaluate` as a user runs it: scoring a sample file made elsewhere, and both
tasks on a checkpoint the trainer wrote (outputs: samples.jsonl, summary.json, the table)."""

import json
import math
import subprocess
import sys

import pytest

from evaluation.problems import load_problems
from scripts import evaluate
from tests.fixtures import REPO, SMALL, output_of, run_trainer, small_data, subprocess_env


def _read(out_dir):
    with open(out_dir / "samples.jsonl") as stream:
        rows = [json.loads(line) for line in stream]
    with open(out_dir / "summary.json") as stream:
        return rows, json.load(stream)


def test_scoring_a_sample_file(tmp_path, capsys):
    problems = load_problems(4)
    samples = tmp_path / "samples.jsonl"
    with open(samples, "w") as stream:
        for problem in problems:  # one right and one wrong completion per task
            for completion in (problem.canonical_solution, "    return None\n"):
                stream.write(json.dumps({"task_id": problem.task_id,
                                         "completion": completion}) + "\n")
        stream.write(json.dumps({"task_id": "HumanEval/9", "completion": "    pass\n"}) + "\n")
    out = tmp_path / "out"
    summary = evaluate.main(["--samples", str(samples), "--limit", "4", "--workers", "2",
                             "--out", str(out), "--no-progress"])
    rows, written = _read(out)
    assert written == summary
    assert len(rows) == 8  # HumanEval/9 is past --limit 4
    assert [(r["task_id"], r["sample"], r["passed"]) for r in rows[:2]] == [
        ("HumanEval/0", 0, True), ("HumanEval/0", 1, False)]
    assert all(r["result"] == ("passed" if r["passed"] else "failed: AssertionError")
               for r in rows)
    assert summary["pass@1"] == 0.5 and "pass@10" not in summary  # 2 samples per task
    assert (summary["problems"], summary["samples"], summary["passed"]) == (4, 8, 4)
    assert summary["execution"]["sandbox"] in ("bwrap", "unshare")
    assert "pass@1   0.5000" in capsys.readouterr().out


def test_a_bad_sample_file_is_refused_with_the_line(tmp_path):
    samples = tmp_path / "samples.jsonl"
    samples.write_text('{"task_id": "HumanEval/0", "completion": "  pass"}\n{"task": 1}\n')
    with pytest.raises(ValueError, match=r"samples.jsonl:2 lacks a string \"task_id\""):
        evaluate.main(["--samples", str(samples), "--out", str(tmp_path / "out")])
    samples.write_text('{"task_id": "MBPP/1", "completion": "  pass"}\n')
    with pytest.raises(ValueError, match=r"'MBPP/1' is not one of the 164 HumanEval problems"):
        evaluate.main(["--samples", str(samples), "--out", str(tmp_path / "out")])


@pytest.mark.slow
def test_both_tasks_on_a_trained_checkpoint(tmp_path):
    trained = run_trainer(tmp_path / "run", *SMALL, *small_data(), "train.max_steps=4",
                          "model.max_position_embeddings=1024")
    assert trained.returncode == 0, output_of(trained)
    checkpoint = str(tmp_path / "run" / "checkpoints")

    def run(task, *extra):
        out = tmp_path / task
        done = subprocess.run(
            [sys.executable, "-m", "scripts.evaluate", "--checkpoint", checkpoint, "--task", task,
             "--limit", "3", "--batch-size", "4", "--out", str(out), *extra], cwd=REPO,
            env=subprocess_env(), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, output_of(done)
        return done.stdout, *_read(out)

    printed, rows, summary = run("humaneval", "--samples-per-task", "2", "--temperature", "0.8",
                                 "--top-p", "0.95", "--max-new-tokens", "8")
    assert [(r["task_id"], r["sample"]) for r in rows] == [
        (f"HumanEval/{t}", s) for t in range(3) for s in range(2)]
    assert all(isinstance(r["completion"], str) and 1 <= r["new_tokens"] <= 8 for r in rows)
    assert (summary["step"], summary["num_loops"], summary["samples"]) == (4, 2, 6)
    assert summary["pass@1"] == 0.0  # a 4-step model writes no working code
    assert summary["generation"]["tokens_per_s"] > 0 and "pass@1" in printed

    printed, rows, summary = run("humaneval_nll")
    assert [r["task_id"] for r in rows] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert summary["humaneval_tokens"] == sum(r["tokens"] for r in rows)
    # A barely trained model sits near the uniform guess, ln(640) = 6.46 nats, not at 0 or inf.
    assert 3.0 < summary["humaneval_nll"] < 9.0 and math.isfinite(summary["humaneval_bits"])
    assert "nats/token" in printed

    # The same model as an fp32 Hugging Face export (--hf): the same solution likelihood.
    exported = subprocess.run([sys.executable, "-m", "scripts.export_hf", "--checkpoint", checkpoint,
                               "--out", str(tmp_path / "hf"), "--dtype", "fp32"], cwd=REPO,
                              env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert exported.returncode == 0, output_of(exported)
    done = subprocess.run([sys.executable, "-m", "scripts.evaluate", "--hf", str(tmp_path / "hf"),
                           "--task", "humaneval_nll", "--limit", "3", "--batch-size", "4",
                           "--out", str(tmp_path / "hf_nll")], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, output_of(done)
    _, from_hf = _read(tmp_path / "hf_nll")
    assert from_hf["humaneval_nll"] == pytest.approx(summary["humaneval_nll"], rel=1e-6)
