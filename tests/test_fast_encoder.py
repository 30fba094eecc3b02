"""The fast encoder (data/fast_encoder.py) gives sentencepiece's ids exactly, is really used where
it applies, and steps aside (to sentencepiece) where it does not."""

import random
import sys

import numpy
import pytest
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from data.config import DataConfig
from data.corpus import source_documents, stdlib_files, stdlib_root
from data.errors import CorpusError
from data.fast_encoder import SENTINEL, FastEncoder
from data.tokenizer import CodeTokenizer, train_tokenizer


@pytest.fixture(scope="module")
def stdlib_texts():
    files = stdlib_files(DataConfig().stdlib_exclude_dirs)
    return [document["text"] for document in source_documents(stdlib_root(), files)]


@pytest.fixture(scope="module")
def production_tokenizer(stdlib_texts, tmp_path_factory):
    """The default tokenizer's shape: 4096 pieces trained on the stdlib (~3 s). Its encoder is decided
    here, before any test runs: the choice is made once per tokenizer and kept, so a test that hides
    kitoken must not be the first to ask (every test passes alone and in any selection)."""
    path = str(tmp_path_factory.mktemp("tok") / "code.model")
    tokenizer = CodeTokenizer(train_tokenizer(stdlib_texts, path, 4096))
    assert tokenizer.encoder_in_use == "kitoken"
    return tokenizer


def _edited(sp, edit) -> spm.SentencePieceProcessor:
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(sp.serialized_model_proto())
    edit(proto)
    return spm.SentencePieceProcessor(model_proto=proto.SerializeToString())


def test_ids_equal_sentencepiece_on_every_stdlib_file(production_tokenizer, stdlib_texts):
    assert production_tokenizer.encoder_in_use == "kitoken"
    expected = production_tokenizer.sp.encode(stdlib_texts, num_threads=1)
    assert production_tokenizer.encode_batch(stdlib_texts) == expected
    assert [production_tokenizer.encode(text) for text in stdlib_texts[:50]] == expected[:50]
    # It must actually cut: ~0.5 parts per token on the stdlib. A rule that never cut would be
    # exact too, but 2.5x slower; one that cut everywhere fails the equality above.
    fast = production_tokenizer._fast_encoder()
    cuts = sum(fast.cut(text).count(SENTINEL) for text in stdlib_texts[:100])
    assert cuts > 0.3 * sum(map(len, expected[:100]))


ADVERSARIAL = [
    "", " ", "x", "  \n\t  ", "\n" * 50, "\t\t\r\n\x0c", "0", "1234567890" * 30, "x = 3.14159e-10 + 0x1F",
    "héllo ✓ 😀 日本語 ∑∫ \u2581 \u2581\u2581 a\u2581b", "\x00\x01\x7f", "😀😀😀 \U0010fffc",
    "<fim_prefix>x<fim_middle>y<fim_suffix>", "<s></s><pad><unk>", "<0x41><0x0A>",
    "def f(self):\n" + "    return self.x  # " * 2000 + "\n",
    "a" * 100_000, " " * 70_000, "é" * 5000, "_" * 3000 + "__init__",
    f"a{SENTINEL}b", f"def f():{SENTINEL}\n    return 1\n", SENTINEL, SENTINEL * 3,
]


def test_ids_equal_sentencepiece_on_adversarial_strings(production_tokenizer):
    sp = production_tokenizer.sp
    assert production_tokenizer.encode_batch(ADVERSARIAL) == sp.encode(ADVERSARIAL, num_threads=1)


def test_ids_equal_sentencepiece_on_random_piece_sequences(production_tokenizer):
    # Texts glued from random vocabulary pieces, spaces and odd characters: boundaries inside and
    # between long pieces, which real code meets only sometimes.
    sp = production_tokenizer.sp
    pieces = [sp.id_to_piece(i).replace("\u2581", " ") for i in range(sp.get_piece_size())
              if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i))]
    odd = [" ", "\n", "é", "😀", "9", "\u2581", "\x07", "<s>", "\t"]
    rng = random.Random(0)
    texts = ["".join(rng.choice(pieces + odd) for _ in range(rng.randint(1, 400))) for _ in range(400)]
    assert production_tokenizer.encode_batch(texts) == sp.encode(texts, num_threads=1)


@pytest.mark.parametrize("encoder", ["auto", "sentencepiece"])
def test_lone_surrogate_is_named(production_tokenizer, encoder):
    # sentencepiece's own error is a pybind11 cast message; both encoders name the document.
    tokenizer = CodeTokenizer(production_tokenizer.model_path, encoder=encoder)
    named = "document 1 of the batch holds a lone surrogate U[+]D800 at character 1"
    with pytest.raises(CorpusError, match=named):
        tokenizer.encode_batch(["ok", "a\ud800b"])
    with pytest.raises(CorpusError, match="lone surrogate"):
        tokenizer.encode("\udfff")


def test_the_probe_catches_a_wrong_cut(production_tokenizer):
    # The load-time probe is the guard against a kitoken that merges differently: a cut table that
    # cuts everywhere (so merges are lost) must fail it.
    fast = production_tokenizer._fast_encoder()
    broken = FastEncoder(fast.sp, fast._kitoken, fast._classes, numpy.zeros_like(fast._allowed))
    assert fast.encode(fast.probe) == fast.sp.encode(fast.probe)
    assert broken.encode(fast.probe) != fast.sp.encode(fast.probe)


def _without_byte_fallback(proto):
    kept = [piece for piece in proto.pieces if piece.type != 6]  # BYTE pieces go with the option
    del proto.pieces[:]
    proto.pieces.extend(kept)
    proto.trainer_spec.byte_fallback = False


def _user_defined(proto):
    piece = proto.pieces.add()
    piece.piece, piece.type = "self.assert", 4


def _tied_scores(proto):
    normal = [piece for piece in proto.pieces if piece.type == 1]
    normal[-1].score = normal[-2].score


@pytest.mark.parametrize("edit, reason", [
    (lambda proto: setattr(proto.normalizer_spec, "add_dummy_prefix", True), "normalizer"),
    (lambda proto: setattr(proto.normalizer_spec, "remove_extra_whitespaces", True), "normalizer"),
    (_without_byte_fallback, "byte fallback"),
    (_user_defined, "user-defined"),
    (_tied_scores, "equal scores"),
], ids=["add_dummy_prefix", "remove_extra_whitespaces", "no_byte_fallback", "user_defined", "tied_scores"])
def test_refused_where_it_would_not_be_exact(production_tokenizer, stdlib_texts, edit, reason):
    sp = _edited(production_tokenizer.sp, edit)
    fast, why = FastEncoder.for_model(sp)
    assert fast is None and reason in why


def test_model_trained_with_other_options_falls_back_to_sentencepiece(stdlib_texts, tmp_path):
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(stdlib_texts[:40]), model_prefix=str(tmp_path / "nfkc"), vocab_size=500,
        model_type="unigram", normalization_rule_name="nmt_nfkc", add_dummy_prefix=True,
        control_symbols=["<fim_prefix>", "<fim_middle>", "<fim_suffix>"], pad_id=3,
        max_sentence_length=1 << 16, minloglevel=2)
    tokenizer = CodeTokenizer(str(tmp_path / "nfkc.model"))
    assert tokenizer.encoder_in_use.startswith("sentencepiece (model type")
    texts = stdlib_texts[:40] + ADVERSARIAL[:12]
    assert tokenizer.encode_batch(texts) == tokenizer.sp.encode(texts, num_threads=1)


def test_without_kitoken_or_when_asked_sentencepiece_encodes(production_tokenizer, monkeypatch):
    forced = CodeTokenizer(production_tokenizer.model_path, encoder="sentencepiece")
    assert forced.encoder_in_use == "sentencepiece (encoder='sentencepiece')"
    texts = ADVERSARIAL[:14]
    fast_ids = production_tokenizer.encode_batch(texts)
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "kitoken", None)  # import kitoken now raises ImportError
        missing = CodeTokenizer(production_tokenizer.model_path)
        assert "kitoken is not installed" in missing.encoder_in_use
    assert production_tokenizer.encoder_in_use == "kitoken"  # the shared fixture's choice is untouched
    assert forced.encode_batch(texts) == missing.encode_batch(texts) == fast_ids
    with pytest.raises(ValueError, match="encoder="):
        CodeTokenizer(production_tokenizer.model_path, encoder="fast")


def test_characters_beyond_the_table_are_never_cut_at(production_tokenizer, stdlib_texts, monkeypatch):
    # A vocabulary with more characters than MAX_TABLE_CHARS (CJK comments, say): the rest join
    # everything (fewer cuts), which stays exact.
    import data.fast_encoder as fast_encoder
    monkeypatch.setattr(fast_encoder, "MAX_TABLE_CHARS", 16)
    fast, why = FastEncoder.for_model(production_tokenizer.sp)
    assert why is None and fast._allowed.shape == (18, 18)
    texts = stdlib_texts[:80] + ADVERSARIAL
    assert [fast.encode(text) for text in texts] == production_tokenizer.sp.encode(texts, num_threads=1)
    full = production_tokenizer._fast_encoder()
    assert 0 < sum(fast.cut(t).count(SENTINEL) for t in texts) < sum(full.cut(t).count(SENTINEL) for t in texts)


def test_a_tokenizer_that_has_encoded_still_pickles(production_tokenizer):
    # Spawned data-loader workers and datasets' map pickle it; kitoken's encoder does not pickle.
    import pickle
    production_tokenizer.encode("x = 1")
    copy = pickle.loads(pickle.dumps(production_tokenizer))
    assert copy.encoder_in_use == "kitoken"
    assert copy.encode("def f(): pass") == production_tokenizer.encode("def f(): pass")
