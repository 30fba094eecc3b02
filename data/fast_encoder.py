"""A faster encoder for the code tokenizer that gives sentencepiece's ids exactly (data/tokenizer.py
uses it whenever the model allows; scripts/preprocess.py and the corpus pipeline then both do).

    encoder, reason = FastEncoder.for_model(sp)   # (None, why) when the argument below fails
    encoder.encode(text)                          # == sp.encode(text), id for id

Two parts, each exact on its own:
- The merges run in kitoken (a Rust BPE library, `pip install kitoken`) configured as the model's
  BPE: kitoken's CharPair mode merges, like sentencepiece's bpe_model.cc, the adjacent pair whose
  concatenation is a piece, best score first (kitoken ranks pieces by score), leftmost on ties.
  It differs where scores tie (it breaks ties by rank, not position), on UNUSED and USER_DEFINED
  pieces (sentencepiece re-splits the first, matches the second before merging), and in the
  normalizers it models; `unsupported_reason` refuses all of those.
- The text is cut first where no merge can cross: sentencepiece starts from one symbol per character
  and only ever merges two adjacent symbols into a piece, so every symbol is a substring of a piece;
  where no piece contains the two characters a b next to each other, no symbol ever covers that
  boundary and each side is merged exactly as it would be alone. Cutting there lets kitoken work on
  short parts (its linear scan; whole files go to its heap, 2.5x slower) and costs a numpy pass.
  Fewer cuts are always safe, so characters beyond the table's size are simply never cut at.
A probe text (every character of the vocabulary, the special pieces' spellings, unknown and
multi-byte characters) is encoded both ways at load time; any difference refuses the fast path.
Measured (stdlib, 10 MB, 4096 pieces, one process): sentencepiece 1.63 CPU s, this 0.58 s (cut
0.10 s, kitoken 0.48 s); `bench/bench_corpus.py` gives the pipeline's figures.
"""

from typing import List, Optional, Tuple

import numpy

MAX_TABLE_CHARS = 2048  # characters with their own row in the pair table (2048² booleans: 4 MiB)
SENTINEL = "\U0010fffd"  # marks the cuts for kitoken's splitter; a text containing it is not cut
SPACE, ESCAPED_SPACE = " ", "\u2581"  # sentencepiece writes spaces as U+2581 before merging
BPE = 2  # TrainerSpec.ModelType
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6  # ModelProto piece types
ISOLATED, WILDCARD = 0, 1  # pair-table classes: in no piece's pairs (always cut), untracked (never)


def unsupported_reason(proto) -> Optional[str]:
    """Why the fast path would not give this model's ids (a ModelProto), or None."""
    trainer, normalizer = proto.trainer_spec, proto.normalizer_spec
    if trainer.model_type != BPE:
        return f"model type {trainer.model_type} is not BPE"
    if normalizer.precompiled_charsmap or normalizer.add_dummy_prefix or normalizer.remove_extra_whitespaces:
        return (f"normalizer {normalizer.name!r} (add_dummy_prefix={normalizer.add_dummy_prefix}, "
                f"remove_extra_whitespaces={normalizer.remove_extra_whitespaces}) does more than "
                f"write spaces as U+2581")
    if not normalizer.escape_whitespaces or trainer.treat_whitespace_as_suffix:
        return "whitespace is not escaped as a U+2581 prefix"
    if not trainer.byte_fallback:
        return "no byte fallback: sentencepiece fuses runs of unknown characters into one <unk>"
    kinds = {piece.type for piece in proto.pieces}
    if kinds & {USER_DEFINED, UNUSED}:
        return "user-defined or unused pieces (sentencepiece treats them apart from the merges)"
    normal = [piece for piece in proto.pieces if piece.type == NORMAL]
    if len({piece.score for piece in normal}) != len(normal):
        return "pieces with equal scores (ties are broken differently)"
    singles = {piece.piece for piece in normal if len(piece.piece) == 1}
    if any(char not in singles for piece in normal for char in piece.piece):
        return "a piece holds a character that is not a piece of its own"
    return None


def _pair_table(pieces: List[str]) -> Tuple[numpy.ndarray, numpy.ndarray]:
    """(class of every code point, allowed[class a, class b]: some piece holds "ab")."""
    pairs = {(piece[k], piece[k + 1]) for piece in pieces for k in range(len(piece) - 1)}
    counts = {}
    for a, b in pairs:
        counts[a] = counts.get(a, 0) + 1
        counts[b] = counts.get(b, 0) + 1
    tracked = sorted(counts, key=lambda char: (-counts[char], char))[:MAX_TABLE_CHARS]
    classes = numpy.full(0x110000, ISOLATED, dtype=numpy.uint16)
    for char in counts:
        classes[ord(char)] = WILDCARD
    for index, char in enumerate(tracked, start=2):
        classes[ord(char)] = index
    allowed = numpy.zeros((len(tracked) + 2,) * 2, dtype=bool)
    allowed[WILDCARD, 1:] = allowed[1:, WILDCARD] = True
    for a, b in pairs:
        allowed[classes[ord(a)], classes[ord(b)]] = True
    classes[ord(ESCAPED_SPACE)] = classes[ord(SPACE)]  # both become U+2581 before merging
    return classes, allowed


def _probe_text(pieces: List[str], proto) -> str:
    chars = sorted({char for piece in pieces for char in piece})
    spellings = [piece.piece for piece in proto.pieces if piece.type != NORMAL]
    return " ".join(["".join(chars), "".join(reversed(chars)), *spellings, *pieces[::7],
                     "é ✓ 😀 日本語 \x00\x07\x7f \u2581a\u2581 b  c\t\n\r\n"])


class FastEncoder:
    def __init__(self, sp, kitoken_encoder, classes: numpy.ndarray, allowed: numpy.ndarray):
        self.sp, self._kitoken = sp, kitoken_encoder
        self._classes, self._allowed = classes, allowed
        self.probe = ""  # the load-time check's text (for_model)

    @classmethod
    def for_model(cls, sp) -> Tuple[Optional["FastEncoder"], Optional[str]]:
        """(encoder, None), or (None, why not) for a model or an install the fast path cannot serve."""
        from sentencepiece import sentencepiece_model_pb2

        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString(sp.serialized_model_proto())
        reason = unsupported_reason(proto)
        if reason:
            return None, reason
        try:
            import kitoken
        except ImportError:
            return None, "kitoken is not installed (pip install kitoken)"
        from importlib.metadata import version
        encoder = kitoken.Kitoken.from_sentencepiece(sp.serialized_model_proto())
        config = encoder.config()
        # Replace kitoken's whitespace split (it assumes split_by_whitespace, which code tokenizers
        # turn off) with our cuts, and its <s> ... </s> templates: we add specials ourselves.
        config["split"] = [{"Pattern": {"pattern": {"String": SENTINEL}, "behavior": "Remove"}}]
        config["templates"] = []
        encoder.set_config(config)
        pieces = [piece.piece.replace(ESCAPED_SPACE, SPACE) for piece in proto.pieces if piece.type == NORMAL]
        fast = cls(sp, encoder, *_pair_table(pieces))
        fast.probe = _probe_text(pieces, proto)
        if fast.encode(fast.probe) != sp.encode(fast.probe):
            return None, f"kitoken {version('kitoken')} disagrees with sentencepiece on the probe text"
        return fast, None

    def cut(self, text: str) -> str:
        """`text` with SENTINEL at every boundary no merge can cross."""
        codes = numpy.frombuffer(text.encode("utf-32-le"), dtype=numpy.uint32)
        classes = self._classes[codes]
        cuts = numpy.flatnonzero(~self._allowed[classes[:-1], classes[1:]]) + 1
        return numpy.insert(codes, cuts, ord(SENTINEL)).tobytes().decode("utf-32-le")

    def encode(self, text: str) -> List[int]:
        if len(text) < 2:
            return self.sp.encode(text)
        if SENTINEL in text:
            return self.sp.encode(text)  # would be cut where the text has it; rare enough to pay for
        return self._kitoken.encode(self.cut(text))  # a lone surrogate: UnicodeEncodeError
