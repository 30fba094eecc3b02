"""Checkpoints: layout, `latest`, retention, refusing another model's checkpoint, no pickled code."""

import io
import os
import pickle

import pytest
import torch

from pretrain.checkpoint import iter_name, resolve_resume
from pretrain.engines.megatron_checkpoint import MetadataUnpickler
from tests.fixtures import REPO, SMALL, output_of, run_trainer, small_data


@pytest.fixture(scope="module")
def six_step_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("six")
    result = run_trainer(run_dir, "train.max_steps=6", "checkpoint.interval=2", "checkpoint.keep=2",
                         *SMALL, *small_data())
    assert result.returncode == 0, output_of(result)
    return run_dir


def test_layout_latest_and_retention(six_step_run):
    root = six_step_run / "checkpoints"
    assert sorted(os.listdir(root)) == ["iter_0000004", "iter_0000006", "latest"]
    assert (root / "latest").read_text() == "iter_0000006\n"
    folder = root / "iter_0000006"
    for name in ("loopcoder.json", "config.yaml", "common.pt", ".metadata", "rng"):
        assert (folder / name).exists(), name
    assert resolve_resume("auto", str(root)) == str(folder)
    assert resolve_resume("none", str(root)) is None
    assert resolve_resume(str(folder), str(root)) == str(folder)


def test_checkpoint_files_load_without_pickled_code(six_step_run):
    folder = six_step_run / "checkpoints" / "iter_0000006"
    torch.load(folder / "common.pt", weights_only=True)
    torch.load(folder / "rng" / "rank_00000.pt", weights_only=True)
    with open(folder / ".metadata", "rb") as stream:
        MetadataUnpickler(stream).load()


def test_metadata_unpickler_refuses_code():
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        MetadataUnpickler(io.BytesIO(pickle.dumps(Evil()))).load()


@pytest.mark.parametrize("override, message", [
    ("model.num_loops=3", "checkpoint iter_0000006 has num_loops=2 but the config says 3; "
                          "pass model.num_loops=2 or checkpoint.resume=none"),
    ("model.hidden_size=128", "checkpoint iter_0000006 has hidden_size=64 but the config says "
                              "128; pass model.hidden_size=64 or checkpoint.resume=none"),
])
def test_refuses_a_checkpoint_of_another_shape(six_step_run, tmp_path, override, message):
    result = run_trainer(tmp_path, f"checkpoint.resume={six_step_run / 'checkpoints'}",
                         "train.max_steps=8", *SMALL, *small_data(), override)
    assert result.returncode == 2, output_of(result)
    assert message in output_of(result)


def test_iter_name():
    assert iter_name(200) == "iter_0000200"


def test_entry_module_imports_neither_torch_nor_megatron():
    """megatron-core's checkpoint writer starts a helper with multiprocessing's "spawn", which
    re-imports the main module (pretrain.train): kept light, that costs ~1 s, not ~7 s per save."""
    import subprocess
    import sys

    probe = "import sys, pretrain.train; print(sorted({'torch', 'megatron.core'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
