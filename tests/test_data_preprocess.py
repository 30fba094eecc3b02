"""Preprocessing writes megatron indexed shards that give the documents back, in order, with EOD."""

import json
import os

import datasets
import numpy
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from data.corpus import read_corpus
from data.indexed import list_shards, preprocess
from data.tokenizer import CodeTokenizer

DOCUMENTS = [f"def f{i}(x):\n\treturn x * {i}  # é\n" * (1 + i % 3) for i in range(11)] + ["", "\n"]


def _read_back(prefix):
    documents = []
    for shard in list_shards(prefix):
        dataset = IndexedDataset(shard)
        documents += [dataset[i].tolist() for i in range(len(dataset))]
    return documents


def test_documents_come_back_in_order_with_eod(prepared, tmp_path):
    tokenizer = CodeTokenizer(prepared.tokenizer_model)
    corpus = datasets.Dataset.from_dict({"text": DOCUMENTS})
    prefix = str(tmp_path / "toy")
    shards = preprocess(corpus, prepared.tokenizer_model, prefix, num_shards=3, num_workers=2,
                        progress=False)
    assert shards == list_shards(prefix) and len(shards) == 3
    expected = [tokenizer.encode(text) + [tokenizer.eod_id] for text in DOCUMENTS]
    assert _read_back(prefix) == expected
    assert [tokenizer.decode(ids[:-1]) for ids in _read_back(prefix)] == DOCUMENTS


def test_rerun_skips_finished_shards_and_redoes_broken_ones(prepared, tmp_path):
    corpus = datasets.Dataset.from_dict({"text": DOCUMENTS})
    prefix = str(tmp_path / "toy")
    shards = preprocess(corpus, prepared.tokenizer_model, prefix, num_shards=2, progress=False)
    mtimes = [os.stat(s + ".bin").st_mtime_ns for s in shards]
    before = _read_back(prefix)
    with open(shards[1] + ".bin", "r+b") as stream:  # an interrupted copy, say
        stream.truncate(8)
    preprocess(corpus, prepared.tokenizer_model, prefix, num_shards=2, progress=False)
    assert os.stat(shards[0] + ".bin").st_mtime_ns == mtimes[0]  # untouched
    assert _read_back(prefix) == before  # the broken one rebuilt
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]
    assert json.load(open(prefix + ".json"))["num_documents"] == len(DOCUMENTS)


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_readers_take_a_named_text_column(tmp_path, kind):
    rows = [{"content": text, "repo": "r"} for text in DOCUMENTS[:4]]
    path = tmp_path / f"corpus.{kind}"
    if kind == "jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    corpus = read_corpus(str(path), text_key="content", cache_dir=str(tmp_path / "hf"))
    assert list(corpus["text"]) == DOCUMENTS[:4]
    with pytest.raises(KeyError, match="no column 'code'"):
        read_corpus(str(path), text_key="code", cache_dir=str(tmp_path / "hf"))


def test_source_folder_reader_keeps_paths_and_bytes(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_bytes(b"x = 1\r\n\tpass\n")
    (tmp_path / "b.py").write_text("print('b')\n")
    (tmp_path / "notes.txt").write_text("not code")
    corpus = read_corpus(str(tmp_path), cache_dir=str(tmp_path / "hf"))
    assert list(corpus["path"]) == ["b.py", os.path.join("pkg", "a.py")]
    assert list(corpus["text"]) == ["print('b')\n", "x = 1\r\n\tpass\n"]
