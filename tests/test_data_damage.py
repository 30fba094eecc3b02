"""Damaged data is refused before training, with one paragraph naming the file, the field and the
fix; what is accepted trains on exactly the tokens that were written.

The attacks: random changes of every .idx field (seeded), token ids beyond the vocabulary in shards
without a manifest, a damaged manifest, a damaged data-loader state, source folders of mixed
encodings, and jsonl files with the usual accidents (a cut line, a stray byte, a missing key)."""

import gzip
import json
import logging
import os
import random
import shutil
import struct

import numpy
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from data.config import DataConfig
from data.corpus import read_jsonl, read_source_folder
from data.errors import CorpusError, DataConfigError, DataError, ShardError
from data.indexed import list_shards, manifest_path
from data.loader import build_loader
from data.prepare import PreparedData, prepare_data
from data.shard_check import check_path, check_shard
from data.tokenizer import CodeTokenizer
from pretrain.errors import run_tool
from tests.fixtures import DATA_SEQ_LENGTH as SEQ_LENGTH

HEADER = 34


@pytest.fixture
def shard(prepared, tmp_path):
    """A private copy of one train shard (no manifest next to it), free to break, and its tokens
    as megatron reads them."""
    source = list_shards(prepared.train_blend[0][1])[0]
    prefix = str(tmp_path / "shard")
    for ext in (".bin", ".idx"):
        shutil.copy(source + ext, prefix + ext)
    clean = IndexedDataset(prefix, mmap=True)
    sequences = [clean.get(i).copy() for i in range(len(clean))]
    return prefix, sequences, CodeTokenizer(prepared.tokenizer_model).vocab_size


def _counts(prefix):
    with open(prefix + ".idx", "rb") as stream:
        return struct.unpack("<QQ", stream.read(HEADER)[18:34])


def _fields(n, d):
    """Every field of the .idx: (name in the error, byte offset, struct format)."""
    yield "version", 9, "<Q"
    yield "dtype", 17, "<B"
    yield "sequence count", 18, "<Q"
    yield "document count", 26, "<Q"
    for i in range(n):
        yield "sequence_lengths", HEADER + 4 * i, "<i"
        yield "sequence_pointers", HEADER + 4 * n + 8 * i, "<q"
    for i in range(d):
        yield "document_indices", HEADER + 12 * n + 8 * i, "<q"


def _new_value(rng, old, fmt):
    if fmt == "<B":
        return rng.choice([v for v in range(256) if v != old])
    choices = [old + rng.choice([-1, 1]), old + rng.randint(2, 5000), old - rng.randint(2, 5000),
               rng.randint(0, 1 << 20), -old - 1]
    if fmt == "<Q":  # the unsigned header counts: a negative write is a huge count
        choices = [v % (1 << 64) for v in choices]
    return rng.choice([v for v in choices if v != old])


def test_random_index_corruption_is_refused_or_changes_nothing_read(shard):
    """Each trial changes one field of the .idx to another value. Either check_shard refuses the
    shard, naming the file and the field, or megatron reads every sequence exactly as written
    (a change that does not matter, e.g. uint16 read as int16 with ids < 32768, or a document
    boundary, which GPT packing never reads). Never silently shifted tokens."""
    prefix, sequences, vocab = shard
    n, d = _counts(prefix)
    with open(prefix + ".idx", "rb") as stream:
        pristine = stream.read()
    fields = list(_fields(n, d))
    rng = random.Random(17)
    refused = 0
    for trial in range(60):
        name, offset, fmt = rng.choice(fields)
        (old,) = struct.unpack_from(fmt, pristine, offset)
        damaged = bytearray(pristine)
        struct.pack_into(fmt, damaged, offset, _new_value(rng, old, fmt))
        with open(prefix + ".idx", "wb") as stream:
            stream.write(damaged)
        try:
            check_shard(prefix, vocab)
        except ShardError as error:
            refused += 1
            message = str(error)
            assert prefix in message and "\n" not in message, message
            named = {"version": ["version"], "dtype": ["dtype"],
                     "sequence count": ["sequence count"], "document count": ["document count"],
                     "sequence_lengths": ["sequence_lengths"],
                     "sequence_pointers": ["sequence_pointers"],
                     "document_indices": ["document_indices"]}[name]
            assert any(word in message for word in named + ["dtype code"]), (name, message)
            assert "re-create it" in message or "another" in message, message
            continue
        read = IndexedDataset(prefix, mmap=True)
        assert len(read) == len(sequences), (trial, name)
        for i, tokens in enumerate(sequences):
            numpy.testing.assert_array_equal(read.get(i), tokens, err_msg=f"{name} trial {trial}")
    assert refused >= 45  # nearly every change is structural; the rest were proven harmless above


def test_a_check_result_cached_earlier_never_hides_later_damage(shard):
    prefix, _, vocab = shard
    past = 1_000_000_000  # a shard written long ago: its check is cached
    for ext in (".bin", ".idx"):
        os.utime(prefix + ext, (past, past))
    assert check_shard(prefix, vocab) > 0
    assert os.path.isfile(check_path(prefix))
    n, _ = _counts(prefix)
    with open(prefix + ".idx", "r+b") as stream:  # the 3rd pointer, now
        stream.seek(HEADER + 4 * n + 8 * 2)
        stream.write(struct.pack("<q", 4))
    with pytest.raises(ShardError, match=r"sequence_pointers\[2\] is 4 but"):
        check_shard(prefix, vocab)


def test_a_damaged_pointer_is_named_where_training_starts(data_cfg, prepared, shard):
    """The loader's path names the damaged pointer: it neither trains on shifted tokens nor blames
    megatron-core."""
    prefix, _, _ = shard
    n, _ = _counts(prefix)
    with open(prefix + ".idx", "r+b") as stream:
        stream.seek(HEADER + 4 * n + 8 * (n // 2))
        (pointer,) = struct.unpack("<q", stream.read(8))
        stream.seek(HEADER + 4 * n + 8 * (n // 2))
        stream.write(struct.pack("<q", pointer + 2))
    broken = PreparedData(prepared.tokenizer_model, [[1.0, prefix]], [])
    with pytest.raises(ShardError, match=rf"sequence_pointers\[{n // 2}\] is {pointer + 2}") as error:
        build_loader(data_cfg, broken, "train", SEQ_LENGTH, 8, 2, 0, 1, 0)
    assert "megatron-core" not in str(error.value)


@pytest.mark.parametrize("position", ["first", "middle", "last"])
def test_token_ids_beyond_the_vocabulary_are_refused_without_a_manifest(prepared, shard, position):
    """No manifest: the shard's tokenizer is unknown, so the ids are checked against the one given
    (not an IndexError at step 1)."""
    prefix, sequences, vocab = shard
    total = sum(len(s) for s in sequences)
    where = {"first": 0, "middle": total // 2, "last": total - 1}[position]
    tokens = numpy.memmap(prefix + ".bin", dtype=numpy.uint16, mode="r+")
    tokens[where] = vocab + 7
    tokens.flush()
    del tokens
    ends = numpy.cumsum([len(s) for s in sequences])
    sequence = int(numpy.searchsorted(ends, where, side="right"))
    user = DataConfig(blend=[[1.0, prefix]], tokenizer_model=prepared.tokenizer_model)
    with pytest.raises(ShardError, match=rf"shard\.bin holds token id {vocab + 7} \(sequence "
                                         rf"{sequence}, .*the tokenizer has {vocab} ids"):
        prepare_data(user, SEQ_LENGTH)


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"tokenizer_sha256": "ab"}'])
def test_a_damaged_manifest_is_named(prepared, tmp_path, content):
    source = prepared.train_blend[0][1]
    prefix = str(tmp_path / os.path.basename(source))
    for shard in list_shards(source):
        for ext in (".bin", ".idx"):
            shutil.copy(shard + ext, tmp_path / (os.path.basename(shard) + ext))
    with open(manifest_path(prefix), "w") as stream:
        stream.write(content)
    user = DataConfig(blend=[[1.0, prefix]], tokenizer_model=prepared.tokenizer_model)
    with pytest.raises(ShardError, match=rf"{manifest_path(prefix)} \(the manifest of .*delete"):
        prepare_data(user, SEQ_LENGTH)


@pytest.mark.parametrize("state", [{}, {"consumed_samples": "12"}, {"consumed_samples": -8}, None])
def test_a_damaged_loader_state_is_a_data_error(data_cfg, prepared, state):
    loader = build_loader(data_cfg, prepared, "train", SEQ_LENGTH, 8, 2, 0, 1, 0)
    with pytest.raises(DataError, match="data-loader state is damaged.*checkpoint.resume"):
        loader.load_state_dict(state)


def test_a_fingerprint_mismatch_is_one_paragraph_naming_the_key(data_cfg, prepared):
    saved = build_loader(data_cfg, prepared, "train", SEQ_LENGTH, 8, 2, 0, 1, 0).state_dict()
    other = build_loader(data_cfg, prepared, "train", SEQ_LENGTH, 8, 2, 0, 1, seed=1)
    with pytest.raises(DataError) as error:
        other.load_state_dict(saved)
    message = str(error.value)
    assert "\n" not in message and "seed: 0 -> 1 (train.seed)" in message
    assert "data.allow_fingerprint_change=true" in message


# ---- data.* values that cannot work are refused before anything is built
@pytest.mark.parametrize("key, value", [
    ("fim_rate", 1.5), ("fim_rate", -0.1), ("fim_spm_rate", 2.0), ("num_workers", 0),
    ("num_shards", 0), ("stdlib_valid_fraction", 1.0), ("stdlib_max_files", -1),
    ("blend", [[0.0, "data/x"]]), ("blend", [["heavy", "data/x"]]), ("blend", ["data/x"]),
    ("vocab_size", 100),
])
def test_impossible_data_values_are_refused_naming_the_key(key, value):
    extra = {"tokenizer_model": "tok.model", "valid_blend": [[1.0, "v"]]} if key == "blend" else {}
    with pytest.raises(DataConfigError, match=rf"data\.{key}"):
        DataConfig(**{key: value}, **extra).validate()


def test_a_training_blend_needs_a_validation_blend():
    with pytest.raises(DataConfigError, match="data.valid_blend"):
        DataConfig(blend=[[1.0, "data/x"]], tokenizer_model="tok.model").validate()
    DataConfig(blend=[[1.0, "data/x"]], tokenizer_model="tok.model").validate(reads_valid_blend=False)


# ---- corpora: mixed encodings
SOURCES = {
    "utf8.py": "print('héllo wörld')\n".encode("utf-8"),
    "ascii.py": b"x = 1\n",
    "latin1.py": "# caf\xe9\nx = 2\n".encode("latin-1"),
    "cp1252.py": "s = '\u201cquoted\u201d'\n".encode("cp1252"),
    "utf16.py": "y = 3\n".encode("utf-16"),
    "binary.py": bytes(range(256)),
}


def _write(folder, files):
    os.makedirs(folder, exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(folder, name), "wb") as stream:
            stream.write(data)


def test_mixed_encodings_keep_the_utf8_files_and_name_the_rest(tmp_path, caplog):
    _write(tmp_path / "src", SOURCES)
    skipped = ["binary.py", "cp1252.py", "latin1.py", "utf16.py"]
    for attempt in ("built", "from datasets' cache"):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="data.corpus"):
            dataset = read_source_folder(str(tmp_path / "src"), cache_dir=str(tmp_path / "hf"))
        assert sorted(dataset["path"]) == ["ascii.py", "utf8.py"], attempt
        assert "print('héllo wörld')\n" in dataset["text"]  # decoded, not mangled
        (warning,) = [r.getMessage() for r in caplog.records if "not UTF-8" in r.getMessage()]
        assert f"skipped 4 of 6 files" in warning and all(name in warning for name in skipped)


def test_a_folder_of_only_non_utf8_files_is_one_clear_error(tmp_path):
    _write(tmp_path / "legacy", {name: SOURCES[name] for name in ("latin1.py", "cp1252.py")})
    with pytest.raises(CorpusError, match=r"none of the 2 files .* is a readable UTF-8 text file "
                                          r"\(cp1252\.py \(not UTF-8\), latin1\.py \(not UTF-8\)\); "
                                          r"convert them"):
        read_source_folder(str(tmp_path / "legacy"), cache_dir=str(tmp_path / "hf"))


# ---- corpora: jsonl accidents
GOOD = [{"text": f"def f{i}():\n    return {i}\n", "id": i} for i in range(6)]


def _damage(kind, lines):
    """The line (1-based) that `kind` breaks, and the file's lines after it."""
    lines = list(lines)
    at = 4
    broken = {
        "cut line": lines[at - 1][:-9],                       # a write stopped mid-record
        "missing quote": lines[at - 1].replace('"text"', 'text', 1),
        "stray byte": lines[at - 1][:5] + "\udcff" + lines[at - 1][5:],
        "not an object": json.dumps([1, 2, 3]),
        "missing key": json.dumps({"content": "x = 1"}),
        "null text": json.dumps({"text": None}),
    }[kind]
    lines[at - 1] = broken
    return at, lines


@pytest.mark.parametrize("gzipped", [False, True])
@pytest.mark.parametrize("kind", ["cut line", "missing quote", "stray byte", "not an object",
                                  "missing key", "null text"])
def test_a_bad_jsonl_record_is_named_by_file_and_line(tmp_path, kind, gzipped):
    at, lines = _damage(kind, [json.dumps(record) for record in GOOD])
    path = str(tmp_path / ("corpus.jsonl.gz" if gzipped else "corpus.jsonl"))
    data = ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")
    with (gzip.open if gzipped else open)(path, "wb") as stream:
        stream.write(data)
    good = str(tmp_path / "first.jsonl")  # a clean file before it: the line is the damaged file's
    with open(good, "w") as stream:
        stream.write("\n".join(json.dumps(record) for record in GOOD) + "\n")
    with pytest.raises(CorpusError) as error:
        read_jsonl([good, path], cache_dir=str(tmp_path / "hf"))
    message = str(error.value)
    assert f"{path} line {at} " in message, message
    assert "\n" not in message and "fix or" in message


def test_preprocess_reports_a_cut_jsonl_line_in_one_paragraph(prepared, tmp_path, capsys):
    from scripts import preprocess

    at, lines = _damage("cut line", [json.dumps(record) for record in GOOD])
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(lines) + "\n")
    status = run_tool(preprocess.main, ["--corpus", str(path), "--tokenizer", prepared.tokenizer_model,
                                        "--output", str(tmp_path / "out"), "--workers", "1"])
    stderr = capsys.readouterr().err
    error = stderr.strip().splitlines()[-1]
    assert status == 3 and error.startswith("data error: ") and f"{path} line {at} is not valid JSON" in error
    assert "Traceback" not in stderr
