"""FIM rearranges a document without losing or duplicating a token, deterministically."""

from collections import Counter

import numpy
import pytest
import torch

from data.fim import FimTokens, apply_fim, fim_permute
from data.loader import build_loader
from tests.fixtures import DATA_SEQ_LENGTH as SEQ_LENGTH

TOKENS = FimTokens(prefix_id=4, middle_id=5, suffix_id=6, eod_id=2)
SENTINELS = Counter({4: 1, 5: 1, 6: 1})


@pytest.mark.parametrize("spm", [False, True])
def test_permuted_document_holds_each_token_once_plus_sentinels(spm):
    rng = numpy.random.default_rng(0)
    for trial in range(200):
        document = rng.integers(10, 600, size=int(rng.integers(0, 40)))
        out = fim_permute(document, rng, spm, TOKENS)
        assert Counter(out.tolist()) == Counter(document.tolist()) + SENTINELS
        assert out[0] == TOKENS.prefix_id and (not spm or out[1] == TOKENS.suffix_id)
        # Reading the parts back in document order gives the document.
        pre, suf, mid = (int(numpy.flatnonzero(out == t)[0]) for t in (4, 6, 5))
        if spm:
            restored = numpy.concatenate([out[mid + 1:], out[suf + 1:mid]])
        else:
            restored = numpy.concatenate([out[pre + 1:suf], out[mid + 1:], out[suf + 1:mid]])
        assert numpy.array_equal(restored, document)


def test_packed_sample_keeps_length_eods_and_is_deterministic():
    rng = numpy.random.default_rng(1)
    sample = rng.integers(10, 600, size=129)
    sample[[20, 21, 70]] = TOKENS.eod_id  # pieces: 20, 0, 48, 58 tokens
    out = apply_fim(sample, numpy.random.default_rng(7), 1.0, 0.5, TOKENS)
    again = apply_fim(sample, numpy.random.default_rng(7), 1.0, 0.5, TOKENS)
    assert numpy.array_equal(out, again) and len(out) == len(sample)
    assert numpy.array_equal(numpy.flatnonzero(out == TOKENS.eod_id), [20, 21, 70])
    assert (out == TOKENS.prefix_id).sum() >= 1
    assert numpy.array_equal(apply_fim(sample, numpy.random.default_rng(7), 0.0, 0.5, TOKENS), sample)


def test_loader_fim_is_the_same_on_every_dp_layout(data_cfg, prepared):
    data_cfg.fim_rate = 0.5

    def batches(dp_size):
        ranks = [build_loader(data_cfg, prepared, "train", SEQ_LENGTH, 8, 2, r, dp_size, 3)
                 for r in range(dp_size)]
        return torch.cat([mb["tokens"] for l in ranks for mb in l.next_global_batch_micro_batches()])

    one, two = batches(1), batches(2)
    assert torch.equal(one, two)
    tokenizer_fim = build_loader(data_cfg, prepared, "train", SEQ_LENGTH, 8, 2, 0, 1, 3).fim_tokens
    assert (one == tokenizer_fim.prefix_id).any()
