"""The tokenizer gives code back byte for byte and guards the model's vocab size."""

import pytest

from data.corpus import stdlib_corpus
from tests.fixtures import small_data_config

TRICKY = "def f(x):\n\tif x:\t# tab\n\t\treturn 'héllo ✓ 😀 日本'  \r\n\n\n    pass   \n\x0c\n"


def test_round_trip_on_stdlib_files(tokenizer):
    cfg = small_data_config()
    corpus = stdlib_corpus(cfg.stdlib_exclude_dirs, cfg.stdlib_valid_fraction, cfg.stdlib_max_files)
    texts = list(corpus["train"]["text"]) + list(corpus["valid"]["text"])
    assert len(texts) >= 30
    mismatched = [i for i, text in enumerate(texts) if tokenizer.decode(tokenizer.encode(text)) != text]
    assert mismatched == []


def test_round_trip_keeps_whitespace_and_unicode(tokenizer):
    # Tabs, \r\n, trailing spaces, form feed, characters outside the vocab (byte fallback).
    assert tokenizer.decode(tokenizer.encode(TRICKY)) == TRICKY


def test_special_tokens_are_distinct_and_never_produced_by_text(tokenizer):
    specials = {tokenizer.bos_id, tokenizer.eod_id, tokenizer.pad_id,
                tokenizer.fim_prefix_id, tokenizer.fim_middle_id, tokenizer.fim_suffix_id}
    assert len(specials) == 6 and max(specials) < tokenizer.vocab_size
    ids = tokenizer.encode("<fim_prefix><fim_middle><fim_suffix></s><pad>")
    assert not specials & set(ids)


def test_model_vocab_may_be_padded_but_not_smaller(tokenizer):
    tokenizer.check_model_vocab(tokenizer.vocab_size)
    tokenizer.check_model_vocab(tokenizer.vocab_size + 128)  # padded for TP divisibility: fine
    with pytest.raises(ValueError, match=rf"model vocab size {tokenizer.vocab_size - 1} .*{tokenizer.vocab_size}"):
        tokenizer.check_model_vocab(tokenizer.vocab_size - 1)


def test_decoding_drops_the_ids_of_a_padded_model_vocab(tokenizer):
    """A model with model.vocab_size > the tokenizer's can pick a padding row (an untrained one
    often does): the end-of-run sample and generate.py decode the rest, they do not crash."""
    ids = tokenizer.encode("def f():\n    return 1\n")
    padded = ids[:3] + [tokenizer.vocab_size, tokenizer.vocab_size + 39] + ids[3:]
    assert tokenizer.decode(padded) == tokenizer.decode(ids) == "def f():\n    return 1\n"
