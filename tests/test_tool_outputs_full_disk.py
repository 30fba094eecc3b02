"""A full disk under a tool's output: one paragraph naming the output, exit 4 (checkpoint tools) or
3 (the tokenizer: data), and nothing left behind (no temp file, no empty lock file, no folder the
tool made). Injected ENOSPC where the writers raise it, and a real full tmpfs where mounting one
is allowed (root). scripts.import_hf and export_hf's shard writer: tests/test_import_hf_full_disk.py."""

import errno
import os

import pytest

from pretrain.errors import EXIT_CHECKPOINT, EXIT_DATA, run_tool
from tests.fixtures import model_and_config, tiny_tmpfs, write_checkpoint

pytestmark = pytest.mark.usefixtures("megatron_world")

NO_SPACE = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _no_space(*args, **kwargs):
    raise NO_SPACE


def _refused(capsys, main, argv, status, named) -> str:
    capsys.readouterr()
    assert run_tool(main, argv) == status
    err = capsys.readouterr().err
    assert "no space left" in err and named in err and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model, cfg = model_and_config(num_loops=2)
    root = tmp_path_factory.mktemp("full_disk") / "ckpt"
    write_checkpoint(model, cfg, str(root))
    return str(root)


def _tool(name):
    import importlib

    return importlib.import_module(f"scripts.{name}").main


@pytest.mark.parametrize("tool, argv", [
    ("export_hf", ["--config-only", "model=plt_7b", "--out"]),
    ("export_hf", ["--checkpoint", "{checkpoint}", "--out"]),
    ("convert_checkpoint", ["{checkpoint}"]),
])
def test_the_output_lock_on_a_full_disk_leaves_no_lock_file(tool, argv, checkpoint, tmp_path,
                                                            monkeypatch, capsys):
    """On a 100%-full disk the lock file's write is the first to fail (os.pwrite in take_lock):
    exit 4 naming the output, no empty `.NAME.lock` and no folder of the output's path left."""
    from pretrain.checkpoint import lock

    out = tmp_path / "new" / "out"
    monkeypatch.setattr(lock.os, "pwrite", _no_space)
    argv = [arg.format(checkpoint=checkpoint) for arg in argv] + [str(out)]
    _refused(capsys, _tool(tool), argv, EXIT_CHECKPOINT, str(out))
    monkeypatch.undo()
    assert os.listdir(tmp_path) == [], sorted(p for p, _, _ in os.walk(tmp_path))


def test_convert_on_a_full_disk_names_dst_and_leaves_nothing(checkpoint, tmp_path, monkeypatch,
                                                              capsys):
    """megatron's and torch's writers say only what their worker said ("unexpected pos", or the
    errno's text inside a CheckpointException): exit 4 naming DST, DST and its new parents gone."""
    from pretrain.checkpoint import convert

    def writer_fails(folder, *args, **kwargs):
        with open(os.path.join(folder, "mp_rank_00_model_states.pt"), "wb") as stream:
            stream.write(b"partial")
        raise RuntimeError(f"worker 0 failed: [Errno 28] {os.strerror(errno.ENOSPC)}")

    monkeypatch.setattr(convert, "write_weights_only", writer_fails)
    out = tmp_path / "new" / "converted"
    _refused(capsys, _tool("convert_checkpoint"), [checkpoint, str(out)], EXIT_CHECKPOINT, str(out))
    assert os.listdir(tmp_path) == []


def test_the_tokenizer_on_a_full_disk_names_output_and_leaves_no_temp_file(tmp_path, monkeypatch,
                                                                            capsys):
    import sentencepiece

    def half_written(*args, model_writer, **kwargs):
        model_writer.write(b"partial")
        raise NO_SPACE

    monkeypatch.setattr(sentencepiece.SentencePieceTrainer, "train", half_written)
    out = tmp_path / "tok" / "t.model"
    _refused(capsys, _tool("train_tokenizer"), ["--max-files", "3", "--output", str(out)],
             EXIT_DATA, str(out))
    assert os.listdir(out.parent) == []


@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 KB tmpfs: a real full disk, where mounting works."""
    with tiny_tmpfs(tmp_path / "disk", "64k") as mount:
        yield mount


def _fill(disk) -> None:
    """Leave the tmpfs 100% full."""
    with open(disk / "filler", "wb", buffering=0) as stream:
        try:
            while True:
                stream.write(b"\0" * 4096)
        except OSError as error:
            assert error.errno == errno.ENOSPC


def test_a_real_full_disk_refuses_every_writer_by_name(checkpoint, tiny_disk, capsys):
    """convert (megatron's writer fails with "unexpected pos"), the lock of a 100%-full disk, and
    the tokenizer (sentencepiece's model on a full disk): each names its output, leaves nothing."""
    out = tiny_disk / "converted"
    _refused(capsys, _tool("convert_checkpoint"), [checkpoint, str(out)], EXIT_CHECKPOINT, str(out))
    assert os.listdir(tiny_disk) == []
    _fill(tiny_disk)
    for tool, argv, status in (
            ("export_hf", ["--config-only", "model=plt_7b", "--out", str(tiny_disk / "hf")],
             EXIT_CHECKPOINT),
            ("convert_checkpoint", [checkpoint, str(tiny_disk / "cv")], EXIT_CHECKPOINT),
            ("train_tokenizer", ["--max-files", "3", "--vocab-size", "400", "--output",
                                 str(tiny_disk / "t.model")], EXIT_DATA)):
        _refused(capsys, _tool(tool), argv, status, str(tiny_disk))
        assert os.listdir(tiny_disk) == ["filler"], (tool, os.listdir(tiny_disk))
