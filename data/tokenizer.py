"""The code tokenizer: a sentencepiece BPE model that round-trips any source text byte for byte.

- `train_tokenizer(texts, model_path, vocab_size)` trains one (scripts/train_tokenizer.py wraps it).
- `CodeTokenizer(model_path)`: `.encode(str) -> list[int]`, `.decode(list[int]) -> str`, the special ids
  `.bos_id .eod_id .pad_id .fim_prefix_id .fim_middle_id .fim_suffix_id`, `.vocab_size`, `.sha256`,
  and `.check_model_vocab(model_vocab_size)`.
Encoding goes through data/fast_encoder.py (the same ids as sentencepiece's, 2.5-2.8x faster) when the
model and the install allow, else through sentencepiece; `.encoder_in_use` says which.
"""

import contextlib
import hashlib
import os
from typing import Iterable, Iterator, List

import sentencepiece as spm

from data.errors import CorpusError, DataConfigError, DataError, MissingDataError
from data.fast_encoder import FastEncoder

# Control symbols: reachable only by id, never produced by encoding text, so a source file that
# happens to contain the string "<fim_prefix>" stays plain text.
FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX = "<fim_prefix>", "<fim_middle>", "<fim_suffix>"
UNK_ID, BOS_ID, EOD_ID, PAD_ID = 0, 1, 2, 3

# Why each option: code must come back exactly, so no normalization (identity), no dummy prefix
# space, no collapsing of runs of spaces, whitespace-only pieces allowed (indentation, blank lines),
# no splitting at whitespace (pieces like ":\n    " are the common case in code), digits split one by
# one (numbers do not eat the vocabulary), byte fallback for any character outside the vocabulary.
TRAINER_OPTIONS = dict(
    model_type="bpe",
    normalization_rule_name="identity",
    add_dummy_prefix=False,
    remove_extra_whitespaces=False,
    allow_whitespace_only_pieces=True,
    split_by_whitespace=False,
    split_digits=True,
    byte_fallback=True,
    character_coverage=0.9995,
    unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOD_ID, pad_id=PAD_ID,
    control_symbols=[FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX],
    max_sentence_length=1 << 16,
    minloglevel=2,
)
LINES_PER_SENTENCE = 16  # sentencepiece trains on "sentences"; a few lines of code keep newlines in


def _sentences(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        lines = text.splitlines(keepends=True)
        for start in range(0, len(lines), LINES_PER_SENTENCE):
            yield "".join(lines[start:start + LINES_PER_SENTENCE])


def train_tokenizer(
    texts: Iterable[str], model_path: str, vocab_size: int, num_threads: int = 2,
    input_sentence_size: int = 2_000_000,
) -> str:
    """Train the BPE model on `texts` and write `model_path` (atomically: temp file, then rename)."""
    if not model_path.endswith(".model"):
        raise ValueError(f"tokenizer path {model_path!r} must end in .model")
    os.makedirs(os.path.dirname(os.path.abspath(model_path)), exist_ok=True)
    tmp_path = f"{model_path}.tmp{os.getpid()}"
    try:
        with open(tmp_path, "wb") as writer:
            spm.SentencePieceTrainer.train(
                sentence_iterator=_sentences(texts), model_writer=writer, vocab_size=vocab_size,
                num_threads=num_threads, input_sentence_size=input_sentence_size,
                shuffle_input_sentence=True, **TRAINER_OPTIONS,
            )
            writer.flush()
            os.fsync(writer.fileno())  # a full disk fails here, not after the rename
        os.replace(tmp_path, model_path)
    except BaseException:
        # Whatever stopped it (a full disk, sentencepiece refusing the vocab size, Ctrl-C): no
        # half-written temp file is left beside the output.
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp_path)
        raise
    return model_path


def file_sha256(path: str) -> str:
    with open(path, "rb") as stream:
        return hashlib.sha256(stream.read()).hexdigest()


def _check_unicode(texts: List[str]) -> None:
    """A clear error for the one input no encoder takes (sentencepiece's own is a pybind11 cast
    error): a lone surrogate, which JSON's \\ud800-style escapes can put in a Python string."""
    for number, text in enumerate(texts):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            raise CorpusError(
                f"document {number} of the batch holds a lone surrogate U+{ord(text[err.start]):04X} at "
                f"character {err.start} (a JSON escape of half a character?): it is not Unicode text and "
                f"cannot be tokenized; repair or drop it (scripts/process_corpus.py's filters drop such "
                f"documents)") from None


class CodeTokenizer:
    def __init__(self, model_path: str, encoder: str = "auto"):
        """encoder: "auto" (the fast encoder where it applies) or "sentencepiece" (always)."""
        if encoder not in ("auto", "sentencepiece"):
            raise ValueError(f"encoder={encoder!r}; expected 'auto' or 'sentencepiece'")
        if not os.path.isfile(model_path):
            raise MissingDataError(
                f"tokenizer model {model_path!r} not found; train one with "
                f"`python -m scripts.train_tokenizer` or leave data.tokenizer_model empty for the "
                f"default stdlib tokenizer"
            )
        self.model_path = model_path
        try:
            self.sp = spm.SentencePieceProcessor(model_file=model_path)
        except (RuntimeError, OSError) as err:
            raise DataError(f"{model_path} is not a sentencepiece model ({err}); give the .model file "
                            f"written by scripts/train_tokenizer.py (data.tokenizer_model)") from None
        self.sha256 = file_sha256(model_path)
        self.vocab_size = self.sp.get_piece_size()
        self.bos_id, self.eod_id, self.pad_id = self.sp.bos_id(), self.sp.eos_id(), self.sp.pad_id()
        self.fim_prefix_id = self.sp.piece_to_id(FIM_PREFIX)
        self.fim_middle_id = self.sp.piece_to_id(FIM_MIDDLE)
        self.fim_suffix_id = self.sp.piece_to_id(FIM_SUFFIX)
        specials = [self.bos_id, self.eod_id, self.pad_id,
                    self.fim_prefix_id, self.fim_middle_id, self.fim_suffix_id]
        if min(specials) < 0 or UNK_ID in specials[3:] or len(set(specials)) != len(specials):
            raise DataError(
                f"{model_path} lacks loopcoder's special tokens (bos/eos/pad/{FIM_PREFIX}/"
                f"{FIM_MIDDLE}/{FIM_SUFFIX}); retrain it with scripts/train_tokenizer.py"
            )
        self._fast, self._fast_refused = None, None if encoder == "auto" else "encoder='sentencepiece'"

    def _fast_encoder(self):
        # Built on first use: most places that load the tokenizer only decode or read its ids.
        if self._fast is None and self._fast_refused is None:
            self._fast, self._fast_refused = FastEncoder.for_model(self.sp)
        return self._fast

    def __getstate__(self) -> dict:
        # kitoken's encoder does not pickle (spawned loader workers, datasets' map): the copy
        # builds its own on first use.
        state = dict(self.__dict__)
        if state["_fast"] is not None:
            state["_fast"] = None
        return state

    @property
    def encoder_in_use(self) -> str:
        """Which encoder encodes: "kitoken" or "sentencepiece (<why not the fast one>)"."""
        return "kitoken" if self._fast_encoder() else f"sentencepiece ({self._fast_refused})"

    def encode(self, text: str) -> List[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: List[str]) -> List[List[int]]:
        # One thread: preprocessing parallelizes with worker processes, and threads of the
        # encoder's own on top would oversubscribe the cores.
        fast = self._fast_encoder()
        try:
            return [fast.encode(text) for text in texts] if fast else self.sp.encode(texts, num_threads=1)
        except (UnicodeEncodeError, RuntimeError, TypeError):
            _check_unicode(texts)
            raise

    def decode(self, ids: List[int]) -> str:
        return self.sp.decode([int(i) for i in ids])

    def check_model_vocab(self, model_vocab_size: int) -> None:
        """The model's embedding may be padded larger than the tokenizer (for TP divisibility);
        smaller would index out of range on the first batch."""
        if model_vocab_size < self.vocab_size:
            raise DataConfigError(
                f"model vocab size {model_vocab_size} is smaller than the tokenizer's "
                f"{self.vocab_size} ({self.model_path}); set model.vocab_size>={self.vocab_size} or "
                f"train a tokenizer with data.vocab_size<={model_vocab_size}"
            )

    def __repr__(self) -> str:
        return f"CodeTokenizer({self.model_path!r}, vocab_size={self.vocab_size})"
