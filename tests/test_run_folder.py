"""A run folder after a crash, a full disk, a move or a copy: its files stay readable, the run
resumes, the tools read it (pretrain/run_files.py, pretrain/run_folder.py)."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from pretrain.run_files import append_rows, read_rows, write_file_atomically
from tests.fixtures import (REPO, SMALL, output_of, read_metrics, run_trainer, small_data,
                            subprocess_env, trainer_env)

TORN = b'{"step": 4, "consumed_samples": 16, "lo'
RESUMABLE = SMALL + small_data() + ["train.decay_steps=20", "diagnostics.interval=0"]


def resume_command(folder, *overrides) -> list:
    return [sys.executable, "-m", "pretrain.train", "--config-dir", str(folder), "--config-name",
            "resume", *overrides]


def resume(folder, *overrides) -> subprocess.CompletedProcess:
    return subprocess.run(resume_command(folder, *overrides), cwd=REPO, env=trainer_env(),
                          capture_output=True, text=True, timeout=300)


# -- the files, in this process ------------------------------------------------------------------
def test_a_torn_last_line_is_dropped_with_a_warning_naming_it(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append_rows(str(path), [{"step": 1, "loss": 2.0}, {"step": 2, "loss": float("nan")}])
    with open(path, "ab") as stream:
        stream.write(TORN)
    warnings = []
    assert read_rows(str(path), warn=warnings.append) == [{"step": 1, "loss": 2.0},
                                                          {"step": 2, "loss": None}]
    assert len(warnings) == 1 and "line 3: a torn last line" in warnings[0]
    assert "NaN" not in path.read_text()  # null: strict JSON


FILL_THE_DISK = """
import resource, signal, sys
from pretrain.run_files import append_rows
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a write past the limit fails (EFBIG) instead
append_rows(sys.argv[1], [{"step": 1, "loss": 1.0}])
size = __import__("os").path.getsize(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 20, resource.RLIM_INFINITY))
try:
    append_rows(sys.argv[1], [{"step": 2, "loss": 0.5, "note": "x" * 100}])
except OSError as error:
    print("refused:", error)
"""


def test_a_write_that_fills_the_disk_leaves_no_torn_line(tmp_path):
    """The disk fills in the middle of a row (a file size limit: the write stores 20 bytes and
    fails): the row is cut off whole, so the next row does not follow half a line."""
    path = tmp_path / "metrics.jsonl"
    result = subprocess.run([sys.executable, "-c", FILL_THE_DISK, str(path)], cwd=REPO,
                            env=subprocess_env(), capture_output=True, text=True, timeout=60)
    assert "refused:" in result.stdout, output_of(result)
    assert path.read_text() == '{"step": 1, "loss": 1.0}\n'


def test_metrics_on_a_full_disk_warn_and_the_run_goes_on(tmp_path, caplog):
    """Only rank 0 writes metrics: raising there alone would hang the other ranks."""
    from pretrain.metrics import MetricsLogger

    metrics = MetricsLogger(str(tmp_path), True, 10, OmegaConf.create({"mode": "disabled"}), {})
    metrics.path = "/dev/full"  # every write fails with ENOSPC
    metrics.log({"step": 1, "consumed_samples": 4, "loss": 1.0})
    assert "could not append step 1" in caplog.text and "No space left" in caplog.text


def test_an_atomic_write_leaves_the_old_file_when_it_fails(tmp_path):
    path = tmp_path / "resume.yaml"
    path.write_text("old: 1\n")
    with pytest.raises(TypeError):
        write_file_atomically(str(path), None)  # fails inside the write, after the temp file opened
    assert path.read_text() == "old: 1\n" and os.listdir(tmp_path) == ["resume.yaml"]
    write_file_atomically(str(path), "new: 2\n")
    assert path.read_text() == "new: 2\n" and os.listdir(tmp_path) == ["resume.yaml"]


def test_plot_run_reads_a_torn_tail_and_refuses_a_missing_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    append_rows(str(run / "metrics.jsonl"), [
        {"step": s, "consumed_samples": 4 * s, "loss": 3.0 - s / 10} for s in (1, 2)])
    with open(run / "metrics.jsonl", "ab") as stream:
        stream.write(TORN)
    for args in ([str(run)], [str(tmp_path / "no_such_run")]):
        result = subprocess.run([sys.executable, "-m", "scripts.plot_run", *args], cwd=REPO,
                                env=subprocess_env(), capture_output=True, text=True, timeout=120)
        if args[0] == str(run):
            assert result.returncode == 0, output_of(result)
            assert "torn last line" in result.stderr and (run / "run.png").exists()
        else:
            assert result.returncode == 2, output_of(result)
            assert "no_such_run is not a folder" in result.stderr
            assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1


# -- the trainer -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run folder with a checkpoint at step 2."""
    run_dir = tmp_path_factory.mktemp("trained") / "R"
    result = run_trainer(run_dir, "train.max_steps=2", *RESUMABLE)
    assert result.returncode == 0, output_of(result)
    return run_dir


def _snapshot(folder) -> dict:
    return {os.path.relpath(os.path.join(d, n), folder): os.stat(os.path.join(d, n)).st_mtime_ns
            for d, _, names in os.walk(folder) for n in names}


def test_a_moved_run_folder_with_a_torn_metrics_line_resumes_where_it_is_now(tmp_path, trained):
    """Moved after a crash mid-row: the resumed run trains in the new place, cuts the half line
    off (with a warning) and goes on. (One trainer run for both: they are independent.)"""
    original, moved = tmp_path / "R", tmp_path / "R2"
    shutil.copytree(trained, original)
    with open(original / "metrics.jsonl", "ab") as stream:
        stream.write(TORN)
    os.rename(original, moved)
    result = resume(moved, "train.max_steps=3")
    assert result.returncode == 0, output_of(result)
    assert "resumed from" in output_of(result) and "torn last line" in output_of(result)
    assert TORN not in (moved / "metrics.jsonl").read_bytes()
    assert not original.exists(), "it wrote into the old path"
    assert (moved / "checkpoints" / "latest").read_text() == "iter_0000003\n"
    assert [row["step"] for row in read_metrics(moved)] == [1, 2, 3]
    saved = OmegaConf.load(moved / "config.yaml")
    assert saved.run_dir == str(moved) and saved.checkpoint.dir == str(moved / "checkpoints")


def test_a_copied_run_folder_resumes_in_the_copy_and_leaves_the_original(tmp_path, trained):
    original, copy = tmp_path / "R", tmp_path / "R copy, 2"  # a name with a comma and a space
    shutil.copytree(trained, original)
    shutil.copytree(original, copy)
    before = _snapshot(original)
    result = resume(copy, "train.max_steps=3")
    assert result.returncode == 0, output_of(result)
    assert _snapshot(original) == before, "it wrote into the original"
    assert (copy / "checkpoints" / "latest").read_text() == "iter_0000003\n"
    assert f"--config-dir {copy} " in (copy / "resume.yaml").read_text()


def test_an_old_resume_yaml_in_a_moved_folder_is_refused_naming_both(tmp_path, trained):
    """A resume.yaml written with absolute paths (before it followed its folder)."""
    original, moved = tmp_path / "R", tmp_path / "R2"
    shutil.copytree(trained, moved)
    text = (moved / "resume.yaml").read_text()
    text = text.replace(f"${{run_folder:'{trained}'}}", str(original))
    (moved / "resume.yaml").write_text(text.replace("${run_dir}", str(original)))
    result = resume(moved, "train.max_steps=3")
    assert result.returncode == 2, output_of(result)
    message = output_of(result)
    assert f"names the run folder {original}, not the folder it is in ({moved})" in message
    assert f"checkpoint.dir={moved}/checkpoints" in message and "Traceback" not in message
    assert not (original / "checkpoints").exists()


def test_a_resume_yaml_that_is_not_yaml_exits_2_naming_the_file(tmp_path, trained):
    run_dir = tmp_path / "R"
    shutil.copytree(trained, run_dir)
    with open(run_dir / "resume.yaml", "a") as stream:
        stream.write("model:\n  num_loops: [2\n")
    result = resume(run_dir)
    assert result.returncode == 2, output_of(result)
    assert f"{run_dir}/resume.yaml, line" in output_of(result)
    assert "Traceback" not in output_of(result)


def test_a_nan_loss_run_diverges_with_diagnostics_on_and_strict_json_metrics(tmp_path):
    """Loss NaN at every step with the loop diagnostics each step: exit 5 (not a crash in the
    diagnostics), and metrics.jsonl holds null where the loss was NaN."""
    result = run_trainer(tmp_path, "train.max_steps=6", "train.max_skipped_steps=2",
                         "debug.nan_loss_at_steps=[1,2,3,4]", "diagnostics.interval=1",
                         "checkpoint.interval=0", *SMALL, *small_data())
    assert result.returncode == 5, output_of(result)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line, parse_constant=pytest.fail) for line in lines]
    losses = [row["loss"] for row in rows if "loop" not in row]
    assert losses == [None, None, None] and any("loop" in row for row in rows)


@pytest.mark.parametrize("hydra_files", [[], ["hydra.output_subdir=null", "hydra/job_logging=stdout"]])
def test_a_full_disk_at_start_exits_4_and_leaves_the_config_files_whole(tmp_path, hydra_files):
    """The run folder's disk is full when a run (a resume) starts: Hydra's own files (its .hydra
    folder and log, written first) or, without them, config.yaml / resume.yaml cannot be written.
    Exit 4 with one paragraph naming the folder, no traceback, and the previous resume.yaml is
    still there, whole; no temp file is left."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        run_dir = disk / "run"
        run_dir.mkdir()
        (run_dir / "resume.yaml").write_text("# the previous one\n")
        with open(disk / "filler", "wb", buffering=0) as stream, pytest.raises(OSError):
            while True:
                stream.write(b"x" * 4096)
        result = run_trainer(run_dir, "train.max_steps=3", *SMALL, *small_data(), *hydra_files)
        assert result.returncode == 4, output_of(result)
        assert "No space left on device" in output_of(result)
        assert f"into the run folder {run_dir}" in output_of(result) or (
            f"resume.yaml into {run_dir}" in output_of(result))
        assert "Traceback" not in output_of(result)
        assert (run_dir / "resume.yaml").read_text() == "# the previous one\n"
        assert not [n for n in os.listdir(run_dir) if n.endswith(".tmp")]
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_a_copied_run_folder_gets_its_own_wandb_run_and_a_moved_one_keeps_it(tmp_path):
    from pretrain.metrics import _wandb_id

    original = tmp_path / "R"
    original.mkdir()
    first = _wandb_id(str(original))
    assert _wandb_id(str(original)) == first  # a resume in place
    shutil.copytree(original, tmp_path / "copy")
    assert _wandb_id(str(tmp_path / "copy")) != first
    os.rename(original, tmp_path / "moved")
    assert _wandb_id(str(tmp_path / "moved")) == first
