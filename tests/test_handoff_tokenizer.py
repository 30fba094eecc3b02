"""The exported tokenizer: AutoTokenizer (a stock PreTrainedTokenizerFast from tokenizer.json, no
remote code) gives the ids data/tokenizer.py gives, on real code: 300 files of the Python stdlib
(about 1.5M tokens), every id equal; specials by id only, no BOS added, EOD as eos."""

import glob
import os
import sysconfig

import pytest

from tests.fixtures import small_prepared

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    from data.tokenizer import CodeTokenizer
    from handoff.tokenizer_files import write_tokenizer_files

    ours = CodeTokenizer(small_prepared().tokenizer_model)
    folder = tmp_path_factory.mktemp("tokenizer")
    write_tokenizer_files(ours, str(folder), max_length=1 << 20)
    return ours, transformers.AutoTokenizer.from_pretrained(folder)


def stdlib_files(count):
    root = sysconfig.get_paths()["stdlib"]
    return sorted(glob.glob(os.path.join(root, "**", "*.py"), recursive=True))[:count]


def test_ids_equal_ours_on_300_stdlib_files(tokenizers):
    ours, theirs = tokenizers
    files = stdlib_files(300)
    assert len(files) == 300
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as stream:
            text = stream.read()
        expected = ours.encode(text)
        assert theirs(text)["input_ids"] == expected, path
        assert theirs.decode(expected) == text, path


def test_special_ids_and_no_bos(tokenizers):
    ours, theirs = tokenizers
    assert (theirs.bos_token_id, theirs.eos_token_id, theirs.pad_token_id) == (
        ours.bos_id, ours.eod_id, ours.pad_id)
    text = "x = '<fim_prefix></s>'  # 2024 é 😀\n"  # specials as text stay text
    assert theirs(text)["input_ids"] == ours.encode(text)
    assert theirs.convert_tokens_to_ids("<fim_middle>") == ours.fim_middle_id
