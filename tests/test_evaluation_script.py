"""`python -m scripts.evaluate` as a user runs it: scoring a sample file made elsewhere, and both
tasks on a checkpoint the trainer wrote (outputs: samples.jsonl, summary.json, the table)."""

import json
import math
import os
import subprocess
import sys

import pytest

from evaluation.problems import load_problems
from evaluation import report
from pretrain.errors import run_tool
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


def _refused(argv, capsys) -> tuple:
    """(exit status, the one paragraph printed) of `python -m scripts.evaluate ARGV`."""
    status = run_tool(evaluate.main, argv)
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return status, err


GOOD = json.dumps({"task_id": "HumanEval/0", "completion": "    pass\n"}) + "\n"
BAD_SAMPLE_FILES = {  # content -> what the message names
    b"": "holds no samples", b"\n  \n": "holds no samples",
    GOOD.encode() + b'{"task": 1}\n': ':2 lacks a string "task_id"',
    b'{"task_id": "MBPP/1", "completion": "  pass"}\n': "'MBPP/1' is not one of the 164",
    GOOD.encode() + GOOD.encode()[:-4] + b"\n": ":2 is not a JSON line",
    b'{"task_id": "HumanEval/0", "completion": "\x00"}\n': ":1 is not a JSON line",
    b"\x00\n": ":1 is not a JSON line",
    b'{"task_id": "HumanEval/0", "completion": "\xff"}\n': ":1 is not UTF-8",
    b"[" * 100_000 + b"\n": ":1 is not a JSON line", b"[1, 2]\n": ":1 lacks a string",
    b'{"task_id": "HumanEval/0", "completion": 3}\n': ":1 lacks a string",
    b'{"task_id": "HumanEval/9", "completion": "  pass"}\n': "no sample of the first 4 problems",
}


@pytest.mark.parametrize("content", list(BAD_SAMPLE_FILES), ids=range(len(BAD_SAMPLE_FILES)))
def test_a_bad_sample_file_is_refused_with_the_line(tmp_path, capsys, content):
    samples = tmp_path / "samples.jsonl"
    samples.write_bytes(content)
    status, message = _refused(["--samples", str(samples), "--limit", "4", "--out",
                                str(tmp_path / "out")], capsys)
    assert status == 3 and BAD_SAMPLE_FILES[content] in message and str(samples) in message
    assert not (tmp_path / "out").exists()


BAD_FLAGS = [["--workers", "0"], ["--workers", "100000"], ["--timeout", "0"],
             ["--timeout", "nan"], ["--timeout", "-1"], ["--limit", "0"], ["--limit", "165"],
             ["--memory-mb", "1"], ["--memory-mb", "0"], ["--samples-per-task", "0"],
             ["--temperature", "-1"], ["--temperature", "inf"], ["--top-p", "0"],
             ["--top-p", "1.5"], ["--max-new-tokens", "0"], ["--batch-size", "0"],
             ["--seed", "-1"], ["--samples-per-task", "2"]]


@pytest.mark.parametrize("flag", BAD_FLAGS, ids=[" ".join(flag) for flag in BAD_FLAGS])
def test_a_bad_flag_is_refused_before_anything_runs(tmp_path, capsys, flag):
    # A checkpoint that is not there: the flag is refused before the model is looked for.
    status, message = _refused(["--checkpoint", str(tmp_path / "missing"), *flag, "--out",
                                str(tmp_path / "out")], capsys)
    assert status == 2 and f"{flag[0]} {flag[1]}" in message, message
    if flag[0] == "--samples-per-task" and flag[1] == "2":
        assert "--temperature" in message
        # Only where it samples: the likelihood task and rescoring take the flag as it is.
        assert "--temperature" not in _refused(
            ["--checkpoint", str(tmp_path / "missing"), *flag, "--task", "humaneval_nll",
             "--out", str(tmp_path / "out")], capsys)[1]
    assert not (tmp_path / "out").exists()


def test_nll_of_a_sample_file_and_a_missing_sandbox_are_refused(tmp_path, capsys, monkeypatch):
    samples = tmp_path / "samples.jsonl"
    samples.write_text(GOOD)
    status, message = _refused(["--samples", str(samples), "--task", "humaneval_nll", "--out",
                                str(tmp_path / "out")], capsys)
    assert status == 2 and "--task humaneval_nll" in message
    status, message = _refused(["--samples", str(tmp_path / "missing.jsonl"), "--out",
                                str(tmp_path / "out")], capsys)
    assert status == 2 and "--samples" in message and "no such file" in message
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on it
    status, message = _refused(["--samples", str(samples), "--sandbox", "bwrap", "--out",
                                str(tmp_path / "out")], capsys)
    assert status == 2 and "--sandbox bwrap" in message and "install bubblewrap" in message
    assert not (tmp_path / "out").exists()


def test_an_output_never_overwrites_an_input(tmp_path, capsys):
    """Rescoring into the folder of the samples (--samples DIR/samples.jsonl --out DIR)
    overwrote the input with one row. An --out that exists and is not empty is refused before
    any work (with a checkpoint: before the model is loaded), and a file that appears in it
    meanwhile is not overwritten either."""
    folder = tmp_path / "eval"
    folder.mkdir()
    samples = folder / "samples.jsonl"
    samples.write_text(GOOD * 3)
    for source in (["--samples", str(samples)], ["--checkpoint", str(tmp_path / "missing")]):
        status, message = _refused([*source, "--limit", "1", "--out", str(folder)], capsys)
        assert status == 2 and f"--out {folder} already exists" in message
    for out in (samples, samples / "below"):  # a file, a folder under a file
        status, message = _refused(["--samples", str(samples), "--out", str(out)], capsys)
        assert status == 2 and f"--out {out}" in message
    assert samples.read_text() == GOOD * 3 and os.listdir(folder) == ["samples.jsonl"]
    with pytest.raises(FileExistsError):
        report.write_outputs(str(folder), [{"row": 1}], {"summary": 1})
    assert samples.read_text() == GOOD * 3 and os.listdir(folder) == ["samples.jsonl"]


def test_a_sample_that_cannot_run_fails_alone(tmp_path):
    """A lone surrogate (valid JSON "\\ud800") aborted the whole evaluation."""
    problems = load_problems(2)
    samples = tmp_path / "samples.jsonl"
    rows = [{"task_id": "HumanEval/0", "completion": "    pass  # \ud800\n"},
            {"task_id": "HumanEval/0", "completion": problems[0].canonical_solution},
            {"task_id": "HumanEval/1", "completion": problems[1].canonical_solution + "\ud800"},
            {"task_id": "HumanEval/1", "completion": problems[1].canonical_solution}]
    samples.write_text("".join(json.dumps(row) + "\n" for row in rows))
    summary = evaluate.main(["--samples", str(samples), "--out", str(tmp_path / "out"),
                             "--limit", "2", "--no-progress"])
    written, _ = _read(tmp_path / "out")
    assert [r["passed"] for r in written] == [False, True, False, True]
    assert all("UnicodeEncodeError" in written[i]["result"] for i in (0, 2))
    assert [r["completion"] for r in written] == [r["completion"] for r in rows]
    assert summary["pass@1"] == 0.5


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


def test_outputs_are_whole_strict_json_or_absent(tmp_path, monkeypatch):
    """samples.jsonl and summary.json appear whole or not at all (a full disk in the middle of
    writing leaves neither, nor a temp file, nor the folder it made), and a non-finite number is
    written null (strict JSON readers refuse NaN)."""
    import errno

    from pretrain.checkpoint import files

    rows = [{"task_id": "HumanEval/0", "time_s": float("nan"), "passed": True}]
    summary = {"metrics": {"nll": float("inf"), "pass@1": 1.0}}
    written = report.write_outputs(str(tmp_path / "ok"), rows, summary)
    assert json.loads(open(written["samples"]).read()) == {**rows[0], "time_s": None}
    assert json.load(open(written["summary"])) == {"metrics": {"nll": None, "pass@1": 1.0}}
    assert sorted(os.listdir(tmp_path / "ok")) == ["samples.jsonl", "summary.json"]

    real = files.write_durably
    calls = []

    def full_on_second(path, write, binary=False):
        calls.append(path)
        if len(calls) == 2:  # summary.json's write: samples.jsonl is already in place
            with open(path, "w") as stream:
                stream.write('{"metr')
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        return real(path, write, binary)

    monkeypatch.setattr(report, "write_durably", full_on_second)
    with pytest.raises(OSError):
        report.write_outputs(str(tmp_path / "full"), rows, summary)
    assert not (tmp_path / "full").exists()


def test_samples_that_leave_problems_out_are_refused(tmp_path, capsys):
    """Samples for HumanEval/5 and /7 only were scored pass@1 1.0 over "2 problems", as if they
    were the benchmark: every problem scored (all 164, or the first --limit) must have samples."""
    problems = load_problems(8)
    samples = tmp_path / "subset.jsonl"
    samples.write_text("".join(json.dumps({"task_id": problems[i].task_id,
                                           "completion": problems[i].canonical_solution}) + "\n"
                               for i in (5, 7)))
    out = tmp_path / "out"
    for extra, count in (([], "162 of all 164"), (["--limit", "8"], "6 of the first 8")):
        status, message = _refused(["--samples", str(samples), "--out", str(out),
                                    "--no-progress", *extra], capsys)
        assert status == 3 and count in message and str(samples) in message, message
        assert "HumanEval/0, HumanEval/1" in message and "--limit" in message, message
        assert not out.exists()


@pytest.mark.parametrize("flag", ["--out", "--samples", "--checkpoint", "--hf"])
def test_an_empty_path_is_refused_naming_its_flag(tmp_path, capsys, flag):
    """`--out ''` passed the --out check, ran the whole evaluation, then failed on "No such
    file or directory: ''" without naming the flag."""
    samples = tmp_path / "samples.jsonl"
    samples.write_text(GOOD)
    source = ["--samples", str(samples)] if flag in ("--out", "--samples") else []
    argv = {"--out": [*source, "--limit", "1", "--out", ""],
            "--samples": ["--samples", "", "--out", str(tmp_path / "out")]}.get(
        flag, [flag, "", "--out", str(tmp_path / "out")])
    status, message = _refused(argv, capsys)
    assert status == 2 and f"{flag} is empty" in message, message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("code", ["ENOSPC", "EDQUOT", "EROFS"])
def test_a_disk_that_fills_while_writing_the_outputs_is_a_user_error(tmp_path, capsys,
                                                                     monkeypatch, code):
    """A full disk (or quota, or a read-only file system) when the outputs are written, after the
    whole evaluation ran, gave exit 1 and a traceback. Now: one paragraph naming --out (exit 3
    for a full disk, 2 for an --out that cannot be written), nothing left in it, and the table
    printed before, so the numbers are not lost."""
    import errno

    def full(path, write, binary=False):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)), path)

    monkeypatch.setattr(report, "write_durably", full)
    samples = tmp_path / "samples.jsonl"
    samples.write_text(json.dumps({"task_id": "HumanEval/0",
                                   "completion": load_problems(1)[0].canonical_solution}) + "\n")
    out = tmp_path / "out"
    status, message = _refused(["--samples", str(samples), "--limit", "1", "--out", str(out),
                                "--no-progress"], capsys)
    assert status == (2 if code == "EROFS" else 3) and f"--out {out}" in message, message
    assert os.strerror(getattr(errno, code)) in message, message
    assert not out.exists()
