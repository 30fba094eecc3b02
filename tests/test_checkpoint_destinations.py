"""Tools never destroy what they were given, and a checkpoint folder resumes only its own run.

Written as the careless commands they are: a tool's output that is its input under another
spelling (the same folder, a `latest`-pointed iter_ folder and its parent, one inside the other, a
symlink, a relative path); an import into a run's checkpoint folder; two exports to one folder; a
weights-only checkpoint resumed; a `latest` that leads out of its folder; a stray `iter_backup/`.
The tools run in-process through `run_tool`, as `python -m scripts.X` runs them; the trainer runs
as a user starts it.
"""

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys

import pytest

from model.config import ConfigError
from pretrain.checkpoint import files, resolve_resume
from pretrain.checkpoint.lineage import set_aside_later_branch
from pretrain.checkpoint.lock import one_writer, output_lock_path
from pretrain.checkpoint.resume import refuse_weights_only
from pretrain.errors import EXIT_CHECKPOINT, EXIT_CONFIG, CheckpointError, run_tool
from tests.fixtures import (REPO, SMALL, model_and_config, output_of, run_trainer,
                            small_data, trainer_env, write_checkpoint)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A weights-only megatron checkpoint dir (iter_0000003 + latest), written in-process."""
    from pretrain.distributed import single_process_world

    single_process_world()
    model, model_cfg = model_and_config()
    root = tmp_path_factory.mktemp("source") / "ckpt"
    write_checkpoint(model, model_cfg, str(root))
    return root


def snapshot(folder):
    """Every file below `folder` (and the folder's entries): what a refusal must leave as it was."""
    found = {}
    for directory, dirs, names in os.walk(folder):
        for name in names + dirs:
            path = os.path.join(directory, name)
            found[os.path.relpath(path, folder)] = (
                hashlib.sha256(open(path, "rb").read()).hexdigest() if os.path.isfile(path) else "dir")
    return found


def tool(name, *args):
    import importlib

    return run_tool(importlib.import_module(f"scripts.{name}").main, [str(a) for a in args])


def copy_of(checkpoint, tmp_path):
    shutil.copytree(checkpoint, tmp_path / "ckpt", symlinks=True)
    (tmp_path / "link").symlink_to(tmp_path / "ckpt")
    return tmp_path / "ckpt"


# Source and destination as the user may spell one folder, or two nested ones.
OVERLAPS = [("ckpt", "ckpt"), ("ckpt", "ckpt/iter_0000003/.."), ("ckpt/iter_0000003", "ckpt"),
            ("ckpt", "ckpt/converted"), ("ckpt/iter_0000003", "ckpt/iter_0000003/out"),
            ("ckpt", "link"), ("link/iter_0000003", "ckpt"), ("./ckpt", "../" + "{tmp}/ckpt"),
            ("ckpt", "."), ("ckpt/iter_0000003", "link/iter_0000003/new")]


@pytest.mark.parametrize("src,dst", OVERLAPS)
def test_convert_never_writes_where_it_reads(checkpoint, tmp_path, monkeypatch, capsys, src, dst):
    copy_of(checkpoint, tmp_path)
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    status = tool("convert_checkpoint", src, dst.format(tmp=tmp_path.name))
    assert status == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "a tool never writes where it reads" in err and "Traceback" not in err, err
    assert snapshot(tmp_path) == before  # nothing written, not even a lock file


@pytest.mark.parametrize("src,dst", OVERLAPS)
def test_export_never_writes_where_it_reads(checkpoint, tmp_path, monkeypatch, capsys, src, dst):
    copy_of(checkpoint, tmp_path)
    monkeypatch.chdir(tmp_path)
    dst = dst.format(tmp=tmp_path.name)
    before = snapshot(tmp_path)
    assert tool("export_hf", "--checkpoint", src, "--out", dst) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "a tool never writes where it reads" in err and "Traceback" not in err, err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("out", ["ckpt/latest", "ckpt/iter_0000003/rows.jsonl", "link/rows.jsonl",
                                 "ckpt"])
def test_diagnose_never_writes_into_its_checkpoint(checkpoint, tmp_path, monkeypatch, capsys, out):
    copy_of(checkpoint, tmp_path)
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    assert tool("diagnose", "ckpt", "--random-tokens", "--out", out) == EXIT_CONFIG
    assert "a tool never writes where it reads" in capsys.readouterr().err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("hf,out", [("hf", "hf"), ("hf", "hf/ckpt"), ("hf/sub", "hf"),
                                    ("hf", "link_to_hf"), ("./hf", "../{tmp}/hf/x")])
def test_import_never_writes_where_it_reads(tmp_path, monkeypatch, capsys, hf, out):
    (tmp_path / "hf" / "sub").mkdir(parents=True)
    (tmp_path / "link_to_hf").symlink_to(tmp_path / "hf")
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    assert tool("import_hf", "--hf", hf, "--out", out.format(tmp=tmp_path.name)) == EXIT_CONFIG
    assert "a tool never writes where it reads" in capsys.readouterr().err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("content,expected", [
    (["iter_0000003", "latest"], "holds checkpoints (iter_0000003, latest)"),
    (["latest"], "holds checkpoints (latest)"),
    (["iter_backup"], "holds checkpoints (iter_backup)"),
    (["notes.txt"], "is not empty (notes.txt)"),
])
def test_a_tool_never_writes_into_a_used_folder(checkpoint, tmp_path, capsys, content, expected):
    """import_hf --out a run's checkpoint folder moved its `latest`: refused for anything in it."""
    used = tmp_path / "run" / "checkpoints"
    used.mkdir(parents=True)
    for name in content:
        if name.startswith("iter_"):
            shutil.copytree(checkpoint / "iter_0000003", used / name)
        else:
            (used / name).write_text("iter_0000003\n")
    hf = tmp_path / "hf"
    hf.mkdir()
    before = snapshot(tmp_path / "run")
    for command in (("import_hf", "--hf", hf, "--out", used),
                    ("convert_checkpoint", checkpoint, used)):
        assert tool(*command) == EXIT_CONFIG, command
        err = capsys.readouterr().err
        assert expected in err and "checkpoint.init_from" in err, err
        assert snapshot(tmp_path / "run") == before
    assert not os.path.exists(output_lock_path(str(used)))


def test_convert_writes_the_engine_named_by_to_and_without_it_the_other(checkpoint, tmp_path,
                                                                        capsys):
    """--to names the target engine (the engine table, pretrain/engines/__init__.py); without it
    the one engine that did not write SRC, as before; its own engine is refused, nothing written."""
    from pretrain.checkpoint.convert import checkpoint_engine

    assert tool("convert_checkpoint", checkpoint, tmp_path / "ds", "--to", "deepspeed") == 0
    assert checkpoint_engine(str(tmp_path / "ds" / "iter_0000003")) == "deepspeed"
    assert tool("convert_checkpoint", tmp_path / "ds", tmp_path / "back") == 0
    assert checkpoint_engine(str(tmp_path / "back" / "iter_0000003")) == "megatron"
    capsys.readouterr()
    assert tool("convert_checkpoint", tmp_path / "ds", tmp_path / "same", "--to", "deepspeed") == \
        EXIT_CONFIG
    assert "written by engine=deepspeed already" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["back", "ds"]


def test_init_from_stages_another_engines_checkpoint_in_the_runs_engine(checkpoint, tmp_path):
    """checkpoint.init_from of a megatron checkpoint into an engine=deepspeed run: converted into
    the run's engine (named, not "the other one"); of the run's own engine: used as it is."""
    from pretrain.checkpoint.convert import checkpoint_engine
    from pretrain.checkpoint.init import _stage

    def no_hf(*args):
        raise AssertionError("not an HF directory")

    staged = _stage(str(checkpoint), "deepspeed", str(tmp_path / "staging"), {}, no_hf)
    assert checkpoint_engine(staged) == "deepspeed" and staged.startswith(str(tmp_path))
    own = _stage(str(checkpoint), "megatron", str(tmp_path / "staging"), {}, no_hf)
    assert own == os.path.join(str(checkpoint), "iter_0000003")


def test_convert_into_a_new_folder_works_and_a_failure_leaves_nothing(checkpoint, tmp_path):
    from pretrain.checkpoint.destination import new_checkpoint_dir

    assert tool("convert_checkpoint", checkpoint, tmp_path / "converted") == 0
    assert (tmp_path / "converted" / "latest").read_text() == "iter_0000003\n"
    assert sorted(os.listdir(tmp_path)) == ["converted"]  # no lock file, no temp folder left
    broken = tmp_path / "broken"
    shutil.copytree(checkpoint, broken)
    (broken / "iter_0000003" / "config.yaml").write_text("model: {}\n")
    assert tool("convert_checkpoint", broken, tmp_path / "never") == EXIT_CHECKPOINT
    assert sorted(os.listdir(tmp_path)) == ["broken", "converted"]
    # A failure while writing: the folder the tool created goes; one the user gave empty stays.
    (tmp_path / "given").mkdir()
    for destination in (tmp_path / "made", tmp_path / "given"):
        with pytest.raises(OSError):
            with new_checkpoint_dir(str(destination), "DST"):
                (destination / ".tmp_iter_0000003").mkdir()
                raise OSError(28, "No space left on device")
    assert sorted(os.listdir(tmp_path)) == ["broken", "converted", "given"]


# -- one writer per output -------------------------------------------------------------------------
HOLD = ("import sys, time\nfrom pretrain.checkpoint.lock import one_writer\n"
        "with one_writer(sys.argv[1], '--out'):\n    print('held', flush=True)\n    time.sleep(60)\n")


def test_a_second_export_to_one_output_is_refused_naming_the_first(checkpoint, tmp_path, capsys):
    out = tmp_path / "hf"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], cwd=REPO,
                              env=trainer_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert tool("export_hf", "--checkpoint", checkpoint, "--out", out) == EXIT_CHECKPOINT
        err = capsys.readouterr().err
        assert f"is being written by another live process (pid {holder.pid}" in err, err
        assert "Traceback" not in err
        assert sorted(os.listdir(tmp_path)) == [".hf.lock"]  # the holder's; no staging folder
    finally:
        holder.kill()
        holder.wait()
    # The holder was killed mid-write: its staging folder is cleared by the next export.
    (tmp_path / ".hf.tmp4242").mkdir()
    assert tool("export_hf", "--checkpoint", checkpoint, "--out", out) == 0
    assert sorted(os.listdir(tmp_path)) == ["hf"]
    assert (out / "config.json").is_file()


def test_a_tool_never_writes_into_the_folder_of_a_live_run(checkpoint, tmp_path, capsys):
    from pretrain.checkpoint.lock import FolderLock

    run = FolderLock(str(tmp_path / "ckpt"), str(tmp_path))  # a run starting on an empty folder
    run.acquire()
    try:
        assert tool("convert_checkpoint", checkpoint, tmp_path / "ckpt") == EXIT_CHECKPOINT
        assert f"is in use by another live run (pid {os.getpid()}" in capsys.readouterr().err
        assert os.listdir(tmp_path / "ckpt") == [".lock"]
    finally:
        run.release()


def test_one_writer_is_one_process_at_a_time_and_leaves_no_file(tmp_path):
    out = tmp_path / "corpus"
    with one_writer(str(out), "--output"):
        with pytest.raises(CheckpointError, match=f"--output {out} is being written by another "
                                                  f"live process \\(pid {os.getpid()}"):
            with one_writer(str(out), "--output"):
                pass
    assert os.listdir(tmp_path) == []
    with one_writer(str(out), "--output"):  # released: taken again
        pass


def test_an_export_that_fails_at_publishing_leaves_no_staging_folder(tmp_path):
    from pretrain.checkpoint.destination import staged

    out = tmp_path / "hf"
    with pytest.raises(FileExistsError, match="filled by another writer"):
        with staged(str(out), "--out") as staging:
            (tmp_path / "hf").mkdir()
            (out / "theirs").write_text("x")  # filled by a writer that took no lock
            with open(os.path.join(staging, "config.json"), "w") as stream:
                stream.write("{}")
    assert sorted(os.listdir(tmp_path)) == ["hf"] and os.listdir(out) == ["theirs"]


def test_a_staged_write_that_fails_leaves_nothing_and_one_that_succeeds_is_whole(tmp_path):
    """The one stage-then-publish (pretrain/checkpoint/destination.py): a failure inside the block
    removes the temp folder and never creates the destination; success renames the whole folder
    into place, and a destination that holds something is refused before anything is written."""
    from pretrain.checkpoint.destination import staged

    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="half way"):
        with staged(str(out), "--out") as staging:
            with open(os.path.join(staging, "part"), "w") as stream:
                stream.write("1")
            raise RuntimeError("half way")
    assert os.listdir(tmp_path) == []
    with staged(str(out), "--out") as staging:
        assert os.path.dirname(staging) == str(tmp_path) and not out.exists()
        with open(os.path.join(staging, "part"), "w") as stream:
            stream.write("1")
    assert os.listdir(tmp_path) == ["out"] and (out / "part").read_text() == "1"
    with pytest.raises(FileExistsError, match=f"{out} exists and is not empty; pass another --out"):
        with staged(str(out), "--out"):
            raise AssertionError("not reached: refused before the block")
    assert os.listdir(tmp_path) == ["out"]


def test_a_killed_writers_staging_folders_are_cleared_and_nothing_else(tmp_path):
    from pretrain.checkpoint.destination import clear_stale_staging, stage

    out = tmp_path / "hf"
    killed = stage(str(out))  # what a killed export left: `.hf.tmp<pid>`
    for keep in (".hf.tmpx", ".hf2.tmp1", "hf.tmp1", ".other.tmp1"):
        (tmp_path / keep).mkdir()
    clear_stale_staging(str(out))
    assert not os.path.exists(killed)
    assert sorted(os.listdir(tmp_path)) == [".hf.tmpx", ".hf2.tmp1", ".other.tmp1", "hf.tmp1"]


# -- what a checkpoint folder resumes --------------------------------------------------------------
def test_a_weights_only_checkpoint_is_not_resumed_but_named_for_init_from(checkpoint, tmp_path):
    """An import's checkpoint (weights, no schedule, data position or optimizer), resumed by
    path or found by auto: refused naming checkpoint.init_from, before anything in the folder
    moves (today: the run's checkpoints were set aside, then KeyError 'scheduler')."""
    root = tmp_path / "checkpoints"
    shutil.copytree(checkpoint, root)
    (root / "iter_0000001").mkdir()  # what a resume from step 3 would set aside
    before = snapshot(root)
    result = run_trainer(tmp_path, "train.max_steps=4", *SMALL, *small_data())
    out = output_of(result)
    assert result.returncode == EXIT_CONFIG, out
    assert "holds model weights only" in out and "checkpoint.init_from=" in out, out
    assert "Traceback" not in out
    assert snapshot(root) == before
    state = json.loads((root / "iter_0000003" / "loopcoder.json").read_text())
    with pytest.raises(ConfigError, match=f"checkpoint.init_from={root}"):
        refuse_weights_only(str(root), state)
    # A converted checkpoint is weights-only too, but keeps its run's schedule and data position.
    refuse_weights_only(str(root), dict(state, scheduler={}, data={}))


def escaping(tmp_path, checkpoint):
    """Our checkpoint folder (one checkpoint) and another run's, whose iter_0000003 is not ours."""
    ours, other = tmp_path / "ours" / "ckpt", tmp_path / "other_run" / "ckpt"
    shutil.copytree(checkpoint, other)
    ours.mkdir(parents=True)
    return ours, other


@pytest.mark.parametrize("pointer", ["../../other_run/ckpt/iter_0000003", "{other}/iter_0000003",
                                     "iter_0000003/../../../other_run/ckpt/iter_0000003",
                                     "symlink", "iter_backup", "iter_3", ""])
def test_latest_never_leads_out_of_its_folder(checkpoint, tmp_path, pointer):
    ours, other = escaping(tmp_path, checkpoint)
    if pointer == "symlink":  # the name is right, the folder is another run's
        (ours / "iter_0000003").symlink_to(other / "iter_0000003")
        pointer = "iter_0000003"
    elif pointer == "iter_backup":
        shutil.copytree(other / "iter_0000003", ours / "iter_backup")
    (ours / "latest").write_text(pointer.format(other=other) + "\n")
    with pytest.raises(CheckpointError, match="is not a checkpoint of this folder"):
        resolve_resume("auto", str(ours))
    with pytest.raises(CheckpointError, match="is not a checkpoint of this folder"):
        resolve_resume(str(ours), "unused")


def test_a_run_refuses_to_resume_another_runs_checkpoint_through_latest(checkpoint, tmp_path):
    ours, other = escaping(tmp_path, checkpoint)
    (ours / "latest").write_text("../../other_run/ckpt/iter_0000003\n")
    before = snapshot(tmp_path / "other_run")
    result = run_trainer(tmp_path, f"checkpoint.dir={ours}", "train.max_steps=4", *SMALL,
                         *small_data())
    out = output_of(result)
    assert result.returncode == EXIT_CHECKPOINT, out
    assert f"{ours / 'latest'} names '../../other_run/ckpt/iter_0000003'" in out, out
    assert "Traceback" not in out
    assert snapshot(tmp_path / "other_run") == before


def test_a_stray_iter_folder_is_named_and_left_alone(checkpoint, tmp_path, caplog):
    """iter_backup/ (not iter_ and 7 digits): ignored with a warning naming it; never resumed,
    set aside or deleted by retention."""
    root = tmp_path / "ckpt"
    shutil.copytree(checkpoint, root)
    shutil.copytree(root / "iter_0000003", root / "iter_backup")
    (root / "iter_old").write_text("a file, not a folder")
    with caplog.at_level(logging.WARNING):
        assert files.list_checkpoints(str(root)) == ["iter_0000003"]
    assert f"{root / 'iter_backup'} is not a checkpoint name" in caplog.text
    assert set_aside_later_branch(str(root), 0, None) == ["iter_0000003"]
    assert sorted(os.listdir(root)) == ["abandoned", "iter_backup", "iter_old"]


@pytest.mark.parametrize("sealed", [True, False], ids=["sealed", "without_checksums"])
@pytest.mark.parametrize("link", ["folder", "file"])
def test_a_symbolic_link_inside_a_checkpoint_is_refused(checkpoint, tmp_path, capsys, sealed, link):
    """loopcoder writes no link into a checkpoint; one there (a folder `rng -> elsewhere`, which a
    walk of the folder does not enter, or a file) would be read from outside what was sealed."""
    from pretrain.checkpoint.integrity import CHECKSUMS_FILE

    copy = copy_of(checkpoint, tmp_path)
    folder = copy / open(copy / "latest").read().strip()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    if not sealed:
        os.remove(folder / CHECKSUMS_FILE)
    if link == "folder":
        (elsewhere / "rank_00000.pt").write_bytes(b"not read")
        os.symlink(elsewhere, folder / "rng")
        name = "rng"
    else:
        os.replace(folder / "config.yaml", elsewhere / "config.yaml")
        os.symlink(elsewhere / "config.yaml", folder / "config.yaml")
        name = "config.yaml"
    assert tool("export_hf", "--checkpoint", copy, "--out", tmp_path / "hf") == EXIT_CHECKPOINT
    err = capsys.readouterr().err
    assert "symbolic link" in err and name in err and "Traceback" not in err, err
    assert not (tmp_path / "hf").exists()
