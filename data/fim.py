"""Fill-in-the-middle, as StarCoder and DeepSeek-Coder train it (Bavarian et al. 2022, "Efficient
Training of Language Models to Fill in the Middle").

A packed sample holds several documents (or pieces of them) separated by EOD. Each piece, with
probability `fim_rate`, is cut at two random token positions into prefix/middle/suffix and re-emitted
  PSM: <fim_prefix> prefix <fim_suffix> suffix <fim_middle> middle
  SPM: <fim_prefix> <fim_suffix> suffix <fim_middle> prefix middle   (rate `fim_spm_rate`; StarCoder's
       SPM variant, which keeps prefix+middle contiguous so SPM and PSM share what they learn)
Cuts are at token, not character, boundaries: the sample is already tokenized and re-encoding text at
load time would cost more than the whole loader. The three sentinels make a piece 3 tokens longer, so,
as in StarCoder's Megatron code, the suffix gives up its last 3 tokens to keep the sample length
(pieces whose suffix is shorter stay plain). Randomness comes only from the `rng` passed in, which the
loader seeds with (seed, global sample index): the same sample is permuted the same way on every run,
every rank and after a resume.
"""

from dataclasses import dataclass

import numpy

NUM_SENTINELS = 3


@dataclass(frozen=True)
class FimTokens:
    prefix_id: int
    middle_id: int
    suffix_id: int
    eod_id: int


def _cut_points(length: int, rng: numpy.random.Generator):
    start, end = numpy.sort(rng.integers(0, length + 1, size=2))
    return int(start), int(end)


def _assemble(prefix, middle, suffix, spm: bool, tokens: FimTokens) -> numpy.ndarray:
    pre, mid, suf = ([t] for t in (tokens.prefix_id, tokens.middle_id, tokens.suffix_id))
    parts = [pre, suf, suffix, mid, prefix, middle] if spm else [pre, prefix, suf, suffix, mid, middle]
    return numpy.concatenate([numpy.asarray(p, dtype=prefix.dtype) for p in parts])


def fim_permute(document: numpy.ndarray, rng: numpy.random.Generator, spm: bool,
                tokens: FimTokens) -> numpy.ndarray:
    """One document piece (no EOD) as a FIM example: every token exactly once plus 3 sentinels."""
    start, end = _cut_points(len(document), rng)
    return _assemble(document[:start], document[start:end], document[end:], spm, tokens)


def apply_fim(sample: numpy.ndarray, rng: numpy.random.Generator, fim_rate: float,
              fim_spm_rate: float, tokens: FimTokens) -> numpy.ndarray:
    """FIM on each EOD-separated piece of a packed sample; the result has the sample's length."""
    if fim_rate <= 0.0:
        return sample
    out = []
    for piece in numpy.split(sample, numpy.flatnonzero(sample == tokens.eod_id) + 1):
        has_eod = len(piece) > 0 and piece[-1] == tokens.eod_id
        body = piece[:-1] if has_eod else piece
        # Draw the same numbers for every piece, used or not, so one piece's outcome never shifts
        # the random stream of the next.
        use_fim, use_spm = rng.random() < fim_rate, rng.random() < fim_spm_rate
        start, end = _cut_points(len(body), rng)
        if use_fim and len(body) - end >= NUM_SENTINELS:
            suffix = body[end:len(body) - NUM_SENTINELS]  # room for the sentinels (see above)
            body = _assemble(body[:start], body[start:end], suffix, use_spm, tokens)
        out.append(numpy.concatenate([body, piece[-1:]]) if has_eod else body)
    result = numpy.concatenate(out) if out else sample
    assert len(result) == len(sample), (len(result), len(sample))
    return result
