"""What a corpus may hold that is not a clean document, for both readers: the corpus pipeline's
(data/curation/readers.py, run here reader by reader, no pipeline) and scripts/preprocess.py's
(data/corpus.py). A damaged record is skipped by file and line (pipeline) or refused naming them
(preprocess); an entry that is not a regular readable file is skipped by name; nothing hangs.
tests/test_data_corpus_runs.py runs the whole pipeline on such inputs.
"""

import contextlib
import gzip
import json
import os
import signal
import socket

import pyarrow
import pyarrow.parquet
import pytest

from data.corpus import read_jsonl, read_parquet, read_source_folder
from data.curation.listing import list_entries, listing_text, read_listing
from data.curation.plan import InputSpec
from data.curation.readers import CodeJsonlReader, CodeParquetReader, SourceFolderReader
from data.errors import CorpusError


@contextlib.contextmanager
def deadline(seconds: int = 30):
    """A read that blocks (a fifo opened for reading waits for a writer) fails the test."""
    def expired(signum, frame):
        raise TimeoutError(f"still reading after {seconds}s: something blocked")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run_reader(reader, root, entries, tmp_path):
    """(documents, skipped entries as listed, the reader's counters) of one task over `entries`."""
    listing = tmp_path / "listing.paths"
    listing.write_text(listing_text(entries))
    reader.root, reader.listing, reader.work_dir = str(root), str(listing), str(tmp_path / "work")
    with deadline():
        documents = list(reader.run(None, 0, 1))
    skipped_file = tmp_path / "work" / "skipped" / "00000-000.jsonl"
    lines = skipped_file.read_text().splitlines() if skipped_file.exists() else []
    skipped = [json.loads(line) for line in lines]
    counters = {key: value.total for key, value in reader.stats.stats.items()}
    return documents, skipped, counters


GOOD = [{"text": f"def f{i}(x):\n    return x + {i}\n", "id": f"r{i}"} for i in range(400)]
# One instance of each way a jsonl line can fail to be a document: (raw line, reason).
BAD_LINES = {
    "invalid-utf8": (b'{"text": "x = \xff 1", "id": "bad"}', "not_utf8"),
    "cut-json": (b'{"text": "x = 1", "id": "ba', "bad_json"),
    "null-text": (b'{"text": null, "id": "bad"}', "no_text"),
    "missing-text": (b'{"content": "x = 1", "id": "bad"}', "no_text"),
    "number-text": (b'{"text": 42, "id": "bad"}', "text_not_string"),
    "not-an-object": (b'["x = 1"]', "bad_record"),
    "lone-surrogate": (b'{"text": "x = \\ud800", "id": "bad"}', "not_utf8"),
    "json-null": (b'null', "bad_record"),
}


@pytest.mark.parametrize("records, at", [(400, 201), (3, 2), (1, 1)], ids=["400-at-201", "3-at-2", "only"])
@pytest.mark.parametrize("damage", sorted(BAD_LINES))
def test_a_bad_jsonl_record_is_skipped_by_line_and_every_other_stays(tmp_path, damage, records, at):
    raw, reason = BAD_LINES[damage]
    lines = [json.dumps(record).encode() for record in GOOD[:records]]
    lines[at - 1] = raw
    (tmp_path / "rows.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    documents, skipped, counters = run_reader(CodeJsonlReader(str(tmp_path)), tmp_path,
                                              [("rows.jsonl", None)], tmp_path)
    expected = [record["id"] for number, record in enumerate(GOOD[:records], 1) if number != at]
    assert [document.id for document in documents] == expected
    assert skipped == [{"file": str(tmp_path / "rows.jsonl"), "line": at, "reason": reason,
                        "detail": skipped[0]["detail"]}]
    assert counters[f"dropped_{reason}"] == 1


def test_a_cut_gzip_jsonl_keeps_the_records_before_the_cut(tmp_path):
    data = gzip.compress(b"".join(json.dumps(record).encode() + b"\n" for record in GOOD))
    (tmp_path / "rows.jsonl.gz").write_bytes(data[: len(data) * 2 // 3])
    documents, skipped, _ = run_reader(CodeJsonlReader(str(tmp_path)), tmp_path,
                                       [("rows.jsonl.gz", None)], tmp_path)
    assert 0 < len(documents) < len(GOOD)
    assert [document.id for document in documents] == [r["id"] for r in GOOD[:len(documents)]]
    assert [(s["reason"], s["line"]) for s in skipped] == [("truncated", len(documents) + 1)]


def _bad_utf8_strings(values):
    return pyarrow.array(values, pyarrow.binary()).view(pyarrow.string())


def test_bad_parquet_rows_and_files_are_skipped_by_name(tmp_path):
    tables = {
        "null.parquet": pyarrow.table({"text": ["a = 1", None, "c = 3"], "id": ["n0", "n1", "n2"]}),
        "number.parquet": pyarrow.table({"text": [1, 2], "id": ["i0", "i1"]}),
        "no_column.parquet": pyarrow.table({"content": ["x = 1"]}),
        "utf8.parquet": pyarrow.table({"text": _bad_utf8_strings([b"u = 0", b"u = \xff", b"u = 2"]),
                                       "id": ["u0", "u1", "u2"]}),
    }
    for name, table in tables.items():
        pyarrow.parquet.write_table(table, tmp_path / name)
    # A lone surrogate, as a writer that does not check would store it (pyarrow itself refuses).
    surrogate = _bad_utf8_strings([b"s = 0", "s = '\ud800'".encode("utf-8", "surrogatepass")])
    pyarrow.parquet.write_table(pyarrow.table({"text": surrogate, "id": ["s0", "s1"]}),
                                tmp_path / "surrogate.parquet")
    (tmp_path / "garbage.parquet").write_bytes(b"PAR1 not a parquet file at all")
    names = sorted(tables) + ["surrogate.parquet", "garbage.parquet"]
    documents, skipped, _ = run_reader(CodeParquetReader(str(tmp_path)), tmp_path,
                                       [(name, None) for name in names], tmp_path)
    assert sorted(document.id for document in documents) == ["n0", "n2", "s0", "u0", "u2"]
    found = {(os.path.basename(s["file"]), s.get("row"), s["reason"]) for s in skipped}
    assert found == {("null.parquet", 1, "no_text"), ("number.parquet", 0, "text_not_string"),
                     ("number.parquet", 1, "text_not_string"), ("utf8.parquet", 1, "not_utf8"),
                     ("surrogate.parquet", 1, "not_utf8"), ("no_column.parquet", None, "no_text_column"),
                     ("garbage.parquet", None, "unreadable")}


def odd_folder(root) -> dict:
    """Every kind of entry a folder can hold; {name: expected reason} of those that are skipped."""
    root.mkdir()
    for name in ("good.py", " leading space.py", "new\nline.py", "trailing space.py ",
                 "caf\udce9.py"):  # a name whose bytes are not UTF-8 (latin-1 é)
        (root / name).write_text(f"name = {name.encode('utf-8', 'surrogateescape')!r}\n")
    (root / "pkg.py").mkdir()  # a directory named like a source file: its files are read
    (root / "pkg.py" / "inner.py").write_text("y = 2\n")
    os.symlink("nowhere.py", root / "dangling.py")
    os.symlink("loop.py", root / "loop.py")
    os.symlink(".", root / "cycle")  # a folder symlink loop
    os.mkfifo(root / "fifo.py")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(root / "socket.py"))
    listener.close()
    skipped = {"dangling.py": "dangling_symlink", "loop.py": "symlink_loop", "cycle": "symlinked_dir",
               "fifo.py": "not_a_file", "socket.py": "not_a_file"}
    if os.geteuid() != 0:  # root reads anything
        (root / "secret.py").write_text("z = 3\n")
        os.chmod(root / "secret.py", 0)
        skipped["secret.py"] = "unreadable"
    return skipped


def test_odd_folder_entries_are_skipped_by_name_and_never_block(tmp_path):
    root = tmp_path / "repo"
    expected_skips = odd_folder(root)
    entries = list_entries(InputSpec(str(root), "folder", str(root)))
    assert read_listing_roundtrip(entries, tmp_path) == entries
    documents, skipped, counters = run_reader(SourceFolderReader(str(root)), root, entries, tmp_path)
    assert sorted(document.id for document in documents) == sorted(
        ["good.py", " leading space.py", "new\\nline.py", "trailing space.py ", "caf\\xe9.py",
         "pkg.py/inner.py"])
    assert {os.path.relpath(s["file"], root): s["reason"] for s in skipped} == expected_skips
    assert all(s["line"] is None and s["detail"] for s in skipped)
    assert counters["dropped_not_a_file"] == 2


def read_listing_roundtrip(entries, tmp_path):
    path = tmp_path / "roundtrip.paths"
    path.write_text(listing_text(entries))
    return read_listing(str(path))


def test_a_listing_of_an_older_work_folder_still_reads(tmp_path):
    path = tmp_path / "000.paths"
    path.write_text("a.py\nsub/b.py\n")
    assert read_listing(str(path)) == [("a.py", None), ("sub/b.py", None)]


@pytest.mark.parametrize("make", ["symlink-loop", "fifo", "empty"])
def test_an_input_with_nothing_to_read_is_refused_naming_its_entries(tmp_path, make):
    root = tmp_path / "in"
    root.mkdir()
    if make == "symlink-loop":
        os.symlink("a", root / "b")
        os.symlink("b", root / "a")
        os.symlink("..", root / "up")
    elif make == "fifo":
        os.mkfifo(root / "pipe.py")
    with pytest.raises(CorpusError) as error:
        list_entries(InputSpec(str(root), "folder", str(root)))
    message = str(error.value)
    assert f"--input {str(root)!r} holds no file to read" in message and "\n" not in message
    if make == "symlink-loop":
        assert "up: a symbolic link to a folder" in message


# ----------------------------------------------------------------- scripts/preprocess.py's readers
def test_preprocess_reads_the_odd_folder_and_names_what_it_skips(tmp_path, caplog):
    root = tmp_path / "repo"
    expected_skips = odd_folder(root)
    with deadline():
        dataset = read_source_folder(str(root), cache_dir=str(tmp_path / "hf"))
    # "trailing space.py " does not end in .py: not a source file here
    assert sorted(dataset["path"]) == sorted(
        ["good.py", " leading space.py", "new\nline.py", "caf\\xe9.py", "pkg.py/inner.py"])
    warning = " ".join(record.getMessage() for record in caplog.records)
    for name in set(expected_skips) - {"cycle"}:  # a folder link is not a .py file
        assert f"{name} (" in warning, (name, warning)


@pytest.mark.parametrize("write, where", [
    (lambda path: path.write_bytes(b'{"text": "a"}\n{"text": "b \xff"}\n{"text": "c"}\n'), "line 2 is not UTF-8"),
    (lambda path: pyarrow.parquet.write_table(
        pyarrow.table({"text": _bad_utf8_strings([b"a", b"b", b"c \xff"])}), path), "row 2 is not UTF-8"),
], ids=["jsonl", "parquet"])
def test_preprocess_refuses_text_that_is_not_utf8_naming_the_record(tmp_path, write, where):
    """Arrow's readers take such bytes into a string column unchecked; the tokenizer workers then
    crashed with a traceback."""
    path = tmp_path / ("corpus.jsonl" if "line" in where else "corpus.parquet")
    write(path)
    reader = read_jsonl if path.suffix == ".jsonl" else read_parquet
    with pytest.raises(CorpusError) as error:
        reader(str(path), cache_dir=str(tmp_path / "hf"))
    assert f"{path} {where}" in str(error.value)


@pytest.mark.parametrize("make", ["fifo", "dangling"])
def test_preprocess_refuses_a_corpus_file_that_is_not_a_regular_file(tmp_path, make):
    path = tmp_path / "corpus.jsonl"
    if make == "fifo":
        os.mkfifo(path)
    else:
        os.symlink("gone.jsonl", path)
    with deadline(), pytest.raises(CorpusError) as error:
        read_jsonl(str(path), cache_dir=str(tmp_path / "hf"))
    assert f"not regular readable files: {path} (" in str(error.value)


def test_a_json_array_file_and_a_byte_order_mark_are_read_record_by_record(tmp_path):
    records = GOOD[:3] + [{"text": None, "id": "null"}] + GOOD[3:5]
    (tmp_path / "array.json").write_text(json.dumps(records, indent=1))
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + b"\n".join(json.dumps(r).encode() for r in GOOD[5:7]))
    documents, skipped, _ = run_reader(CodeJsonlReader(str(tmp_path)), tmp_path,
                                       [("array.json", None), ("bom.jsonl", None)], tmp_path)
    assert [document.id for document in documents] == ["r0", "r1", "r2", "r3", "r4", "r5", "r6"]
    assert [(s["record"], s["reason"]) for s in skipped] == [(3, "no_text")]
