"""What a damaged, borrowed or rolled-back checkpoint folder still gets through: nothing.

Written as the accidents and attacks they are: bytes flipped at random offsets in every kind of
checkpoint file (checksums), two live runs on one folder and a requeued run after a killed holder
(the folder lock), a rollback followed by retention (lineage), every function-changing model field
changed on resume (model fields), a crafted pickle in every loader. Runs are `python -m
pretrain.train` as a user starts them; the checks that need no training run in-process.
"""

import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from model.config import CHANGEABLE_FIELDS, STRUCTURAL_FIELDS, ConfigError
from pretrain.checkpoint import verify_complete
from pretrain.checkpoint.integrity import CHECKSUMS_FILE, file_digest
from pretrain.checkpoint.lineage import set_aside_later_branch
from pretrain.checkpoint.resume import _refuse_damaged, check_model_fields, verify_resumable
from pretrain.errors import EXIT_CHECKPOINT, EXIT_CONFIG, CheckpointError
from tests.fixtures import (REPO, SMALL, Exploit, output_of, read_metrics, reseal, run_trainer,
                            small_data, trainer_command, trainer_env)

RUN = SMALL + small_data() + ["train.decay_steps=20", "checkpoint.keep=0"]


@pytest.fixture(scope="module")
def six_steps(tmp_path_factory):
    """Checkpoints at steps 2, 4 and 6 (keep=0 keeps all)."""
    run_dir = tmp_path_factory.mktemp("six")
    result = run_trainer(run_dir, "train.max_steps=6", "checkpoint.interval=2", *RUN)
    assert result.returncode == 0, output_of(result)
    return run_dir


def copy_run(six_steps, tmp_path):
    shutil.copytree(six_steps / "checkpoints", tmp_path / "checkpoints")
    return tmp_path / "checkpoints"


def flip_byte(path, rng):
    size = os.path.getsize(path)
    offset = rng.randrange(size)
    flip_at(path, offset)
    return offset


def flip_at(path, offset, mask=0xFF):
    """XOR the byte at `offset` with `mask` (twice restores it)."""
    with open(path, "r+b") as stream:
        stream.seek(offset)
        byte = stream.read(1)
        stream.seek(offset)
        stream.write(bytes([byte[0] ^ mask]))


def offsets_of(size):
    """The first, middle and last byte, and one byte in every 4 KiB region (at a position that
    moves from region to region): every part of every file, the same on every machine."""
    chosen = {0, size // 2, size - 1}
    for region, start in enumerate(range(0, size, 4096)):
        chosen.add(start + region * 1031 % min(4096, size - start))
    return sorted(chosen)


# Every kind of file a megatron checkpoint holds: the test fails if one is not probed.
FILE_KINDS = (".metadata", ".distcp", "common.pt", "metadata.json", "loopcoder.json",
              "config.yaml", "tokenizer.model", "rng/rank_00000.pt", CHECKSUMS_FILE)


def damaged_files(folder, names):
    """(name, offset, mask) for each flip, the file damaged while the caller checks it."""
    for name in names:
        path = folder / name
        for index, offset in enumerate(offsets_of(os.path.getsize(path))):
            # 0xFF makes any text byte invalid UTF-8; 0x01 keeps text text ("step": 6 -> 7).
            mask = 0x01 if index % 2 and name != CHECKSUMS_FILE else 0xFF
            flip_at(path, offset, mask)
            try:
                yield name, offset, mask
            finally:
                flip_at(path, offset, mask)


def test_every_file_of_a_checkpoint_is_sealed(six_steps):
    folder = six_steps / "checkpoints" / "iter_0000006"
    manifest = json.loads((folder / CHECKSUMS_FILE).read_text())["files"]
    on_disk = sorted(os.path.relpath(os.path.join(d, n), folder) for d, _, names in os.walk(folder)
                     for n in names if n != CHECKSUMS_FILE)
    assert sorted(manifest) == on_disk
    for name in ("loopcoder.json", "config.yaml", "tokenizer.model", ".metadata", "common.pt",
                 "rng/rank_00000.pt"):
        assert name in manifest, name
    assert verify_complete(str(folder))["step"] == 6


def test_a_flipped_byte_in_any_file_is_refused_naming_it(six_steps, tmp_path):
    """Every file, every 4 KiB region of it: refused before anything parses it, the file named,
    the previous checkpoint offered (its files are whole), nothing changed on disk."""
    root = copy_run(six_steps, tmp_path)
    folder = root / "iter_0000006"
    names = sorted(json.loads((folder / CHECKSUMS_FILE).read_text())["files"]) + [CHECKSUMS_FILE]
    assert all(any(n.endswith(kind) for n in names) for kind in FILE_KINDS), names
    before = {name: file_digest(str(folder / name)) for name in names}
    probed = 0
    for name, offset, mask in damaged_files(folder, names):
        with pytest.raises(CheckpointError) as error:
            verify_complete(str(folder))
        assert name in str(error.value), (name, offset, mask, str(error.value))
        probed += 1
    assert probed > 400  # every region of the two ~1 MB shards, at least
    with open(folder / names[0], "r+b") as stream:
        stream.write(b"\0")
    message = str(_refuse_damaged(str(folder), CheckpointError(names[0])))
    assert f"checkpoint.resume={root / 'iter_0000004'}" in message, message
    (folder / names[0]).write_bytes((six_steps / "checkpoints/iter_0000006" / names[0]).read_bytes())
    assert {name: file_digest(str(folder / name)) for name in names} == before


def test_a_damaged_file_of_a_checkpoint_without_checksums_is_named(six_steps, tmp_path):
    """An older checkpoint (no checksums.json): a flipped byte in any archive (.pt, every tensor
    of the .distcp shards) is found by its CRC and named; in the other files it is named or
    unseen (a JSON value that still parses), never a parser's traceback."""
    root = copy_run(six_steps, tmp_path)
    folder = root / "iter_0000006"
    os.remove(folder / CHECKSUMS_FILE)
    verify_complete(str(folder))
    names = sorted(os.path.relpath(os.path.join(d, n), folder) for d, _, found in os.walk(folder)
                   for n in found)
    for name, offset, mask in damaged_files(folder, names):
        try:
            verify_complete(str(folder))
        except CheckpointError as error:
            assert name in str(error), (name, offset, mask, str(error))
        else:  # an archive's unseen bytes are bookkeeping no reader uses, never a record's data
            assert not any(start <= offset < end for start, end in record_bytes(folder, name)), (
                name, offset, mask)


def record_bytes(folder, name):
    """The [start, end) byte ranges of `name` that hold a zip record's data: every archive of a
    .pt file, or of each tensor of a .distcp shard (at the offsets .metadata gives)."""
    import struct
    import zipfile

    from pretrain.checkpoint.readable import Window
    from pretrain.engines.megatron_checkpoint import tensor_archives

    path = folder / name
    if name.endswith(".distcp"):
        archives = [(offset, length) for shard, offset, length in tensor_archives(str(folder))[1]
                    if shard == name]
    elif name.endswith(".pt"):
        archives = [(0, os.path.getsize(path))]
    else:
        return []
    ranges = []
    with open(path, "rb") as stream:
        for base, length in archives:
            for info in zipfile.ZipFile(Window(stream, base, length)).infolist():
                stream.seek(base + info.header_offset + 26)
                name_length, extra_length = struct.unpack("<HH", stream.read(4))
                start = base + info.header_offset + 30 + name_length + extra_length
                ranges.append((start, start + info.compress_size))
    return ranges


def test_a_damaged_checksums_file_is_refused(six_steps, tmp_path):
    root = copy_run(six_steps, tmp_path)
    manifest = root / "iter_0000006" / CHECKSUMS_FILE
    manifest.write_text(manifest.read_text()[:-40])
    with pytest.raises(CheckpointError, match="checksums.json is damaged"):
        verify_complete(str(root / "iter_0000006"))


def test_headers_mode_checks_sizes_and_the_first_mib(six_steps, tmp_path):
    root = copy_run(six_steps, tmp_path)
    folder = root / "iter_0000006"
    verify_complete(str(folder), "headers")
    with open(folder / "common.pt", "r+b") as stream:  # small files are read whole in either mode
        stream.seek(10)
        stream.write(b"\xff")
    with pytest.raises(CheckpointError, match="common.pt does not match"):
        verify_complete(str(folder), "headers")


def test_resume_from_a_damaged_checkpoint_exits_4_naming_the_file_and_the_way_out(six_steps,
                                                                                 tmp_path):
    root = copy_run(six_steps, tmp_path)
    part = sorted(p for p in os.listdir(root / "iter_0000006") if p.endswith(".distcp"))[0]
    with open(root / "iter_0000006" / part, "r+b") as stream:  # the right length, zeroed bytes
        stream.seek(100)
        stream.write(bytes(64))
    result = run_trainer(tmp_path, "train.max_steps=8", *RUN)
    assert result.returncode == EXIT_CHECKPOINT, output_of(result)
    out = output_of(result)
    assert f"{part} does not match its sha256" in out
    assert f"checkpoint.resume={root / 'iter_0000004'}" in out
    assert "Traceback" not in out
    assert (root / "latest").read_text() == "iter_0000006\n"


def test_tools_refuse_a_damaged_checkpoint(six_steps, tmp_path):
    root = copy_run(six_steps, tmp_path)
    flip_byte(root / "iter_0000006" / "config.yaml", random.Random(1))
    result = subprocess.run(
        [sys.executable, "-m", "scripts.generate", "--checkpoint", str(root), "--max-new-tokens", "2"],
        cwd=REPO, env=trainer_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "config.yaml does not match its sha256" in output_of(result)


def test_a_damaged_checkpoint_without_checksums_exits_4_naming_the_file(six_steps, tmp_path):
    """An older checkpoint (no checksums.json) with a damaged payload: a checkpoint error naming
    the file, for a resume and for a tool (exit 4, no traceback; today: OverflowError, exit 1)."""
    root = copy_run(six_steps, tmp_path)
    folder = root / "iter_0000006"
    os.remove(folder / CHECKSUMS_FILE)
    for name in (".metadata", "__0_1.distcp"):
        flip_at(folder / name, os.path.getsize(folder / name) // 3)
        with pytest.raises(CheckpointError, match=f"{folder / name} is damaged"):
            verify_resumable(str(folder))  # what the trainer's resume calls first
        flip_at(folder / name, os.path.getsize(folder / name) // 3)
    flip_at(folder / "common.pt", os.path.getsize(folder / "common.pt") // 3)
    result = subprocess.run([sys.executable, "-m", "scripts.generate", "--checkpoint", str(root),
                             "--max-new-tokens", "2"], cwd=REPO, env=trainer_env(),
                            capture_output=True, text=True, timeout=300)
    out = output_of(result)
    assert result.returncode == EXIT_CHECKPOINT, out
    assert f"{folder / 'common.pt'} is damaged" in out and "Traceback" not in out, out


# -- one live run per folder ---------------------------------------------------------------------
def start(run_dir, *overrides):
    return subprocess.Popen(trainer_command(run_dir, *overrides), cwd=REPO, env=trainer_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def wait_for_rows(run_dir, rows, process, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if os.path.exists(run_dir / "metrics.jsonl") and len(read_metrics(run_dir)) >= rows:
            return
        time.sleep(0.05)
    raise AssertionError(f"no {rows} metrics rows: {process.poll()}")


def test_a_second_run_on_the_folder_is_refused_and_a_killed_holder_blocks_nothing(tmp_path):
    shared = tmp_path / "shared_checkpoints"
    holder = start(tmp_path / "a", "train.max_steps=400", "checkpoint.interval=2",
                   f"checkpoint.dir={shared}", *RUN)
    try:
        wait_for_rows(tmp_path / "a", 4, holder)
        second = run_trainer(tmp_path / "b", "train.max_steps=4", f"checkpoint.dir={shared}", *RUN)
        assert second.returncode == EXIT_CHECKPOINT, output_of(second)
        assert f"is in use by another live run (pid {holder.pid}" in output_of(second)
        assert str(tmp_path / "a") in output_of(second)
        assert holder.poll() is None  # the holder trains on, its saves intact
    finally:
        os.killpg(holder.pid, signal.SIGKILL)  # a dead node: no cleanup of any kind
        holder.wait()
    latest = (shared / "latest").read_text().strip()
    requeued = run_trainer(tmp_path / "a", f"train.max_steps={int(latest[5:]) + 2}",
                           "checkpoint.interval=2", f"checkpoint.dir={shared}", *RUN)
    assert requeued.returncode == 0, output_of(requeued)
    assert f"resumed from {shared / latest}" in output_of(requeued)
    assert not (shared / ".lock").exists()  # a clean end leaves no trace


# -- rollback and retention ----------------------------------------------------------------------
def test_rollback_sets_the_later_branch_aside_and_retention_follows_the_new_one(six_steps,
                                                                                tmp_path):
    root = copy_run(six_steps, tmp_path)
    result = run_trainer(tmp_path, f"checkpoint.resume={root / 'iter_0000002'}",
                         "train.max_steps=8", "checkpoint.interval=2", *RUN[:-1],
                         "checkpoint.keep=2")
    assert result.returncode == 0, output_of(result)
    assert "resumed from" in output_of(result) and "step 2" in output_of(result)
    assert sorted(n for n in os.listdir(root) if n.startswith("iter_")) == [
        "iter_0000006", "iter_0000008"]
    assert (root / "latest").read_text() == "iter_0000008\n"
    (moved,) = os.listdir(root / "abandoned")
    assert sorted(os.listdir(root / "abandoned" / moved)) == ["iter_0000004", "iter_0000006"]
    # The new run's iter_0000006 is its own, not the abandoned one: it continues step 2's weights.
    state = json.loads((root / "iter_0000006" / "loopcoder.json").read_text())
    old = json.loads((root / "abandoned" / moved / "iter_0000006" / "loopcoder.json").read_text())
    assert state["step"] == old["step"] == 6


def test_latest_never_names_the_abandoned_branch(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (2, 4, 6):
        (root / f"iter_{step:07d}").mkdir(parents=True)
    (root / "latest").write_text("iter_0000006\n")
    assert set_aside_later_branch(str(root), 2, str(root / "iter_0000002")) == [
        "iter_0000004", "iter_0000006"]
    assert (root / "latest").read_text() == "iter_0000002\n"
    # A fresh start (checkpoint.resume=none) in a used folder: everything set aside, no latest.
    assert set_aside_later_branch(str(root), 0, None) == ["iter_0000002"]
    assert not (root / "latest").exists()


# -- the model a checkpoint's weights compute ------------------------------------------------------
BASE = dict(num_layers=2, hidden_size=64, num_attention_heads=4, num_query_groups=2,
            ffn_hidden_size=128, vocab_size=640, untie_embeddings_and_output_weights=True,
            shared_kv=True, gate_input="hidden", num_loops=2, clp=True, clp_offset=1,
            clp_emb_scale=1.0, clp_hidden_scale=1.0, normalize_per_loop=True, swa_window=64,
            rotary_base=10000.0, norm_epsilon=1e-5)
CHANGED = dict(num_layers=4, hidden_size=128, num_attention_heads=8, num_query_groups=4,
               ffn_hidden_size=256, vocab_size=1024, untie_embeddings_and_output_weights=False,
               shared_kv=False, gate_input="query", num_loops=3, clp=False, clp_offset=0,
               clp_emb_scale=0.707, clp_hidden_scale=0.053, normalize_per_loop=False,
               swa_window=32, rotary_base=500000.0, norm_epsilon=1e-6)


@pytest.mark.parametrize("field", STRUCTURAL_FIELDS + CHANGEABLE_FIELDS)
def test_every_field_that_changes_the_function_is_compared(field):
    config = dict(BASE, **{field: CHANGED[field]})
    with pytest.raises(ConfigError) as error:
        check_model_fields("iter_0000006", BASE, config)
    assert f"has {field}={BASE[field]} but the config says {CHANGED[field]}" in str(error.value)
    if field in CHANGEABLE_FIELDS:
        check_model_fields("iter_0000006", BASE, config, allowed=[field])
    else:
        with pytest.raises(ConfigError):
            check_model_fields("iter_0000006", BASE, config, allowed=[field])


def test_a_changed_clp_scale_is_refused_unless_allowed_on_purpose(six_steps, tmp_path):
    copy_run(six_steps, tmp_path)
    refused = run_trainer(tmp_path, "train.max_steps=8", "model.clp_hidden_scale=0.053", *RUN)
    assert refused.returncode == EXIT_CONFIG, output_of(refused)
    assert ("has clp_hidden_scale=1.0 but the config says 0.053; pass "
            "model.clp_hidden_scale=1.0 or checkpoint.resume=none") in output_of(refused)
    allowed = run_trainer(tmp_path, "train.max_steps=8", "model.clp_hidden_scale=0.053",
                          "checkpoint.allow_model_change=[clp_hidden_scale]", *RUN)
    assert allowed.returncode == 0, output_of(allowed)


def test_a_structural_field_cannot_be_allowed_to_change():
    from omegaconf import OmegaConf

    from pretrain.config import Config, validate

    config = OmegaConf.structured(Config)
    config.run_dir = "unused"
    config.checkpoint.allow_model_change = ["hidden_size"]
    with pytest.raises(ConfigError, match="decides which weights exist or their shapes"):
        validate(OmegaConf.to_object(config), world_size=1)


# -- crafted pickles -------------------------------------------------------------------------------
@pytest.mark.parametrize("target", [".metadata", "common.pt", "rng/rank_00000.pt"])
def test_a_crafted_pickle_in_a_megatron_checkpoint_runs_nothing(six_steps, tmp_path, target):
    root = copy_run(six_steps, tmp_path)
    folder, marker = root / "iter_0000006", tmp_path / "pwned"
    with open(folder / target, "wb") as stream:
        if target.endswith(".pt"):
            torch.save({"x": Exploit(marker)}, stream)
        else:
            pickle.dump(Exploit(marker), stream)
    reseal(folder)
    result = run_trainer(tmp_path, "train.max_steps=8", *RUN)
    assert result.returncode != 0, output_of(result)
    assert not marker.exists(), "the crafted pickle ran"
    assert "Traceback" not in output_of(result), output_of(result)[-3000:]
