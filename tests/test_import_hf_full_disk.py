"""`scripts.import_hf` on a full disk: exit 4 with one paragraph naming --out, and nothing left
behind (no temp folder, no --out or parent folder the import created; an --out the user made stays
as it was). Injected ENOSPC where megatron's writer raises it, and a real full tmpfs where
mounting one is allowed."""

import os

import pytest

from pretrain.errors import EXIT_CHECKPOINT, run_tool
from tests.fixtures import model_and_config, tiny_tmpfs

pytestmark = pytest.mark.usefixtures("megatron_world")


def test_a_full_disk_leaves_no_out_and_names_it(good_dir, tmp_path, monkeypatch, capsys):
    """ENOSPC in the middle of writing the checkpoint (injected in the payload writer, as
    megatron's writer raises it): exit 4 naming --out, and the folders it created are gone; an --out
    the user made (empty) is left as it was."""
    import errno

    from pretrain.engines import megatron_checkpoint
    from scripts import import_hf

    def full_disk(folder, *args, **kwargs):
        with open(os.path.join(folder, "__0_0.distcp"), "wb") as stream:
            stream.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(folder, "__0_0.distcp"))

    monkeypatch.setattr(megatron_checkpoint, "save", full_disk)
    for out, made_by_user in ((tmp_path / "new" / "ckpt", False), (tmp_path / "given", True)):
        if made_by_user:
            out.mkdir()
        capsys.readouterr()
        assert run_tool(import_hf.main, ["--hf", str(good_dir), "--out", str(out)]) == EXIT_CHECKPOINT
        err = capsys.readouterr().err
        assert "no space left" in err and str(out) in err and "Traceback" not in err, err
        if made_by_user:
            assert out.is_dir() and os.listdir(out) == []
        else:
            assert not (tmp_path / "new").exists()


@pytest.fixture
def tiny_disk(tmp_path):
    """A 300 KB tmpfs (the import needs about 700 KB): a real full disk, where mounting works."""
    with tiny_tmpfs(tmp_path / "disk", "300k") as mount:
        yield mount


def test_a_real_full_disk_leaves_nothing_and_names_out(good_dir, tiny_disk, capsys):
    """On a real full disk megatron's writer fails with torch's "unexpected pos" or a wrapped
    ENOSPC, never an OSError of ours: still exit 4 naming --out, and the disk left empty."""
    from scripts import import_hf

    out = tiny_disk / "ckpt"
    capsys.readouterr()
    assert run_tool(import_hf.main, ["--hf", str(good_dir), "--out", str(out)]) == EXIT_CHECKPOINT
    err = capsys.readouterr().err
    assert "no space left" in err and str(out) in err and "Traceback" not in err, err
    assert os.listdir(tiny_disk) == []


def test_export_on_a_full_disk_names_out_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    """The same for scripts.export_hf: ENOSPC while a shard is written (injected where the shard
    writer saves), exit 4 naming --out, no staging folder and no --out left."""
    import errno

    from handoff import export
    from scripts import export_hf
    from tests.fixtures import write_checkpoint

    model, cfg = model_and_config(num_loops=2)
    write_checkpoint(model, cfg, str(tmp_path / "ckpt"))

    def full_disk(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "hf"))

    monkeypatch.setattr(export.ShardWriter, "finish", full_disk)
    out = tmp_path / "hf"
    capsys.readouterr()
    assert run_tool(export_hf.main, ["--checkpoint", str(tmp_path / "ckpt"), "--out", str(out)]) \
        == EXIT_CHECKPOINT
    err = capsys.readouterr().err
    assert "no space left" in err and str(out) in err and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".hf.lock")) == ["ckpt"]
