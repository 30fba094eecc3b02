"""Broken data fail early, with an error that names the file and the fix."""

import os
import shutil

import pytest

from data.config import DataConfig
from data.corpus import stdlib_root
from data.indexed import ShardError, check_shard, list_shards
from data.loader import build_loader
from data.prepare import PreparedData, prepare_data
from data.tokenizer import CodeTokenizer, train_tokenizer
from tests.fixtures import DATA_SEQ_LENGTH as SEQ_LENGTH


@pytest.fixture
def copied(prepared, tmp_path):
    """A private copy of the train shards, free to break."""
    source = prepared.train_blend[0][1]
    for shard in list_shards(source):
        for ext in (".bin", ".idx"):
            shutil.copy(shard + ext, tmp_path / (os.path.basename(shard) + ext))
    prefix = str(tmp_path / os.path.basename(source))
    return prefix, list_shards(prefix)


def test_truncated_bin_is_named(data_cfg, prepared, copied):
    prefix, shards = copied
    size = os.path.getsize(shards[1] + ".bin")
    with open(shards[1] + ".bin", "r+b") as stream:
        stream.truncate(size - 2)
    with pytest.raises(ShardError, match=rf"{shards[1]}\.bin is truncated: {size - 2} bytes"):
        check_shard(shards[1])
    broken = PreparedData(prepared.tokenizer_model, [[1.0, prefix]], [])
    with pytest.raises(ShardError, match=rf"{shards[1]}\.bin is truncated"):
        build_loader(data_cfg, broken, "train", SEQ_LENGTH, 8, 2, 0, 1, 0)


def test_missing_idx_is_named(data_cfg, prepared, copied):
    prefix, shards = copied
    os.remove(shards[0] + ".idx")
    with pytest.raises(ShardError, match=rf"{shards[0]}\.idx is missing"):
        check_shard(shards[0])
    user_blend = DataConfig(blend=[[1.0, prefix]], tokenizer_model=prepared.tokenizer_model)
    with pytest.raises(ShardError, match=rf"{shards[0]}\.idx is missing"):
        prepare_data(user_blend, SEQ_LENGTH)


def test_truncated_idx_is_named(copied):
    _, shards = copied
    with open(shards[0] + ".idx", "r+b") as stream:
        stream.truncate(40)
    with pytest.raises(ShardError, match=rf"{shards[0]}\.idx is truncated"):
        check_shard(shards[0])


def test_unknown_prefix_names_the_expected_files(tmp_path):
    with pytest.raises(ShardError, match=r"nowhere\.idx.*nowhere-00000-of-00001\.idx"):
        list_shards(str(tmp_path / "nowhere"))


def test_vocab_mismatch_names_both_sizes_and_the_fix(prepared):
    tokenizer = CodeTokenizer(prepared.tokenizer_model)
    with pytest.raises(ValueError, match=r"model vocab size 512 is smaller than the tokenizer's 600.*"
                                         r"vocab_size>=600.*data\.vocab_size<=512"):
        tokenizer.check_model_vocab(512)


def test_shards_refuse_another_tokenizer(data_cfg, prepared, tmp_path):
    texts = [open(os.path.join(stdlib_root(), name)).read() for name in ("ast.py", "typing.py")]
    other = train_tokenizer(texts, str(tmp_path / "other.model"), vocab_size=500)
    prefix = prepared.train_blend[0][1]
    user_blend = DataConfig(blend=[[1.0, prefix]], tokenizer_model=str(other))
    with pytest.raises(ShardError, match=rf"{prefix} was tokenized with .*use that tokenizer"):
        prepare_data(user_blend, SEQ_LENGTH)
