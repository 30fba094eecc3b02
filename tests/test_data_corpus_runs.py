"""The corpus tools end to end on inputs that are not clean corpora (one small pipeline run each,
in this process: `--tasks 1` runs the task here, so a failure can be injected): a bad record and
odd folder entries are skipped and everything else kept; an input of only binaries or only a
symlink loop, an output held by another run, a full disk, each give exit 3 and one paragraph.
"""

import errno
import glob
import json
import os
import subprocess
import sys

import pytest

from data.errors import DiskFullError
from pretrain.errors import run_tool
from tests.fixtures import REPO, small_data_config, small_prepared, subprocess_env
from tests.test_data_corpus_inputs import odd_folder


def corpus_args(inputs, prefix, *extra):
    return ["--input", *map(str, inputs), "--tokenizer", small_prepared().tokenizer_model,
            "--output", str(prefix), "--tasks", "1", "--no-near-dedup", *extra]


def run(args, capsys):
    """(exit status, stderr) of process_corpus in this process."""
    from scripts import process_corpus

    status = run_tool(process_corpus.main, args)
    return status, capsys.readouterr().err


def last_paragraph(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


def test_one_bad_record_and_odd_entries_lose_nothing_else(tmp_path, capsys):
    lines = [json.dumps({"text": f"def f{i}(x):\n    return x * {i}\n", "id": f"r{i}"}).encode()
             for i in range(400)]
    lines[200] = b'{"text": "def g(): return \xff", "id": "bad"}'
    (tmp_path / "rows.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    skipped_entries = odd_folder(tmp_path / "repo")
    prefix = tmp_path / "out"
    status, stderr = run(corpus_args([tmp_path / "rows.jsonl", tmp_path / "repo"], prefix, "--no-filters"), capsys)
    assert status == 0, stderr
    stats = json.loads((tmp_path / "out.stats.json").read_text())
    assert stats["documents"] == 399 + 6  # the folder's six readable files
    listed = {(os.path.basename(s["file"]), s.get("line"), s["reason"]) for s in stats["skipped"]}
    assert ("rows.jsonl", 201, "not_utf8") in listed
    assert {(name, None, reason) for name, reason in skipped_entries.items()} <= listed
    assert stats["skipped_total"] == len(skipped_entries) + 1
    assert f"skipped {tmp_path / 'rows.jsonl'} line 201: is not UTF-8" in stderr
    assert not os.path.exists(f"{prefix}.lock")  # released


def test_a_folder_of_only_binary_files_is_a_data_error(tmp_path, capsys):
    root = tmp_path / "blobs"
    root.mkdir()
    for name in ("a.py", "b.so", "c.png"):
        (root / name).write_bytes(b"\x7fELF\x00\x01" + bytes(range(256)) * 4)
    status, stderr = run(corpus_args([root], tmp_path / "out"), capsys)
    assert status == 3, stderr
    paragraph = last_paragraph(stderr)
    assert paragraph.startswith(f"data error: every document of --input {root} was removed (binary 3)")
    assert f"See {tmp_path / 'out'}.stats.json" in paragraph and "--extensions" in paragraph
    assert "Traceback" not in stderr and not glob.glob(f"{tmp_path / 'out'}-*")


def test_a_folder_of_only_a_symlink_loop_is_refused_before_any_work(tmp_path, capsys):
    root = tmp_path / "loops"
    root.mkdir()
    os.symlink("loop", root / "loop")
    os.symlink(".", root / "self")
    status, stderr = run(corpus_args([root], tmp_path / "new" / "folder" / "out"), capsys)
    assert status == 3 and "Traceback" not in stderr
    assert "holds no file to read" in last_paragraph(stderr) and "a symbolic link loop" in stderr
    assert not os.path.exists(tmp_path / "new")  # no empty output folder left behind


def test_a_second_writer_of_one_output_is_refused_naming_the_holder(tmp_path, capsys):
    (tmp_path / "rows.jsonl").write_text(json.dumps({"text": "x = 1\n"}) + "\n")
    prefix = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from data.curation.output_lock import output_lock\n"
         "with output_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)", str(prefix)],
        cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        status, stderr = run(corpus_args([tmp_path / "rows.jsonl"], prefix), capsys)
    finally:
        holder.kill()
        holder.wait()
    assert status == 3
    paragraph = last_paragraph(stderr)
    assert f"--output {prefix} is being written by another process_corpus (pid {holder.pid} on" in paragraph
    assert not os.path.exists(f"{prefix}.work")  # refused before anything was written
    from data.curation.output_lock import output_lock

    with output_lock(str(prefix)):  # the holder was killed: its lock went with it
        pass


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_tokenizing_is_a_data_error_and_the_rerun_completes(tmp_path, capsys, monkeypatch):
    from megatron.core.datasets import indexed_dataset

    (tmp_path / "rows.jsonl").write_text("".join(json.dumps({"text": f"x = {i}\n"}) + "\n" for i in range(20)))
    prefix = tmp_path / "out"
    args = corpus_args([tmp_path / "rows.jsonl"], prefix, "--no-filters")
    with monkeypatch.context() as patch:
        patch.setattr(indexed_dataset.IndexedDatasetBuilder, "add_document", _disk_full)
        status, stderr = run(args, capsys)
    assert status == 3
    assert last_paragraph(stderr).startswith(f"data error: no space left on the device while writing {prefix}")
    assert "Traceback" not in stderr
    assert not glob.glob(os.path.join(f"{prefix}.work", "shards", "*"))  # no half-written shard
    assert not glob.glob(f"{prefix}-*") and not os.path.exists(f"{prefix}.lock")
    status, stderr = run(args, capsys)
    assert status == 0, stderr
    assert json.loads((tmp_path / "out.stats.json").read_text())["documents"] == 20


def test_a_full_disk_while_building_the_data_cache_leaves_nothing_taken_as_done(tmp_path, monkeypatch):
    from data import indexed
    from data.prepare import _is_complete, prepare_data, stdlib_cache_root

    cfg = small_data_config(cache_dir=str(tmp_path / "cache"), stdlib_max_files=12, num_workers=1,
                            tokenizer_model=small_prepared().tokenizer_model)
    calls = []

    def full_after_a_few(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > 3:
            _disk_full()
        return real(self, *args, **kwargs)

    real = indexed.IndexedDatasetBuilder.add_document
    with monkeypatch.context() as patch:
        patch.setattr(indexed.IndexedDatasetBuilder, "add_document", full_after_a_few)
        with pytest.raises(DiskFullError) as error:
            prepare_data(cfg, 16)
    assert f"the data cache {stdlib_cache_root(cfg)}" in str(error.value)
    root = stdlib_cache_root(cfg)
    written = glob.glob(os.path.join(root, "*")) + glob.glob(os.path.join(root, "tokens-*", "*"))
    assert written and not [path for path in written if ".tmp" in path]
    assert not [folder for folder in glob.glob(os.path.join(root, "tokens-*"))
                if _is_complete(os.path.join(folder, "train"))]
    prepared = prepare_data(cfg, 16)  # the same call completes once there is room
    assert _is_complete(prepared.train_blend[0][1])


def test_a_wrong_text_key_is_a_data_error_naming_the_flag(tmp_path, capsys):
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps({"content": f"x = {i}\n"}) + "\n" for i in range(3)))
    status, stderr = run(corpus_args([tmp_path / "rows.jsonl"], tmp_path / "out"), capsys)
    assert status == 3
    paragraph = last_paragraph(stderr)
    assert "(no_text 3; e.g. " in paragraph and "rows.jsonl: its 'text' is missing (keys: ['content'])" in paragraph
    assert "name the text column with --text-key" in paragraph


def test_make_corpus_on_a_full_disk_leaves_no_cut_file(tmp_path, monkeypatch, capsys):
    import datasets

    from scripts import make_corpus

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("x = 1\n")
    out = tmp_path / "corpus.jsonl"

    def full_after_writing_some(self, path, *args, **kwargs):
        with open(path, "w") as stream:
            stream.write('{"text": "x = ')
        _disk_full()

    monkeypatch.setattr(datasets.Dataset, "to_json", full_after_writing_some)
    status = run_tool(make_corpus.main, ["--corpus", str(tmp_path / "src"), "--output", str(out)])
    assert status == 3 and "no space left on the device while writing" in capsys.readouterr().err
    assert os.listdir(tmp_path) == ["src"]


def test_a_full_disk_while_training_the_cache_tokenizer_leaves_no_model(tmp_path, monkeypatch):
    import sentencepiece

    from data.prepare import prepare_data, stdlib_cache_root

    def write_some_then_full(*args, model_writer, **kwargs):
        model_writer.write(b"\x0a\x05half")
        _disk_full()

    cfg = small_data_config(cache_dir=str(tmp_path / "cache"), stdlib_max_files=12)
    monkeypatch.setattr(sentencepiece.SentencePieceTrainer, "train", write_some_then_full)
    with pytest.raises(DiskFullError, match="free space there or set data.cache_dir"):
        prepare_data(cfg, 16)
    assert [os.path.basename(p) for p in glob.glob(os.path.join(stdlib_cache_root(cfg), "*"))] == ["hf"]


def test_a_full_disk_while_publishing_leaves_an_output_no_training_takes(tmp_path, capsys, monkeypatch):
    from data import indexed
    from data.errors import ShardError
    from data.prepare import prepare_data

    (tmp_path / "rows.jsonl").write_text("".join(json.dumps({"text": f"x = {i}\n"}) + "\n" for i in range(20)))
    prefix = tmp_path / "out"
    real = indexed._write_manifest

    def final_manifest_fails(prefix, tokenizer, num_shards, num_documents, num_tokens):
        if num_tokens is not None:
            _disk_full()
        real(prefix, tokenizer, num_shards, num_documents, num_tokens)

    args = corpus_args([tmp_path / "rows.jsonl"], prefix, "--no-filters")  # the tokenizer built first
    with monkeypatch.context() as patch:
        patch.setattr(indexed, "_write_manifest", final_manifest_fails)
        status, stderr = run(args, capsys)
    assert status == 3 and "no space left on the device" in last_paragraph(stderr)
    assert glob.glob(f"{prefix}-00000-of-00001.idx")  # the shard was published, the run was not
    cfg = small_data_config(blend=[[1.0, str(prefix)]], tokenizer_model=small_prepared().tokenizer_model)
    with pytest.raises(ShardError, match=f"{prefix} is unfinished: its manifest"):
        prepare_data(cfg, 16)
