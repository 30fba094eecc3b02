"""The loader's promises: same seed same batches, DP slices that add up to the global batch, exact
resume at any sample (also across a DP-size change) and a sample order that a longer run only extends."""

import numpy
import pytest
import torch

from data.blend import BlendedStream
from data.errors import DataConfigError
from data.indexed import list_shards
from data.loader import FingerprintMismatch, build_loader
from data.prepare import PreparedData
from data.tokenizer import CodeTokenizer
from tests.fixtures import DATA_SEQ_LENGTH as SEQ_LENGTH

GLOBAL_BATCH, MICRO_BATCH = 8, 2


def loader(cfg, prepared, dp_rank=0, dp_size=1, seed=1234, split="train", seq_length=SEQ_LENGTH):
    return build_loader(cfg, prepared, split, seq_length, GLOBAL_BATCH, MICRO_BATCH, dp_rank,
                        dp_size, seed)


def global_batch(micro_batches_per_rank):
    """Concatenate ranks' micro-batches (rank order, then micro-batch order) into one tensor dict."""
    flat = [mb for rank in micro_batches_per_rank for mb in rank]
    return {key: torch.cat([mb[key] for mb in flat]) for key in flat[0]}


def run(loaders, steps):
    return [global_batch([l.next_global_batch_micro_batches() for l in loaders]) for _ in range(steps)]


def assert_same(batches_a, batches_b):
    assert len(batches_a) == len(batches_b)
    for a, b in zip(batches_a, batches_b):
        for key in a:
            assert torch.equal(a[key], b[key]), key


def test_batch_layout(data_cfg, prepared):
    micro_batches = loader(data_cfg, prepared).next_global_batch_micro_batches()
    assert len(micro_batches) == GLOBAL_BATCH // MICRO_BATCH
    batch = micro_batches[0]
    assert {k: (tuple(v.shape), v.dtype) for k, v in batch.items()} == {
        "tokens": ((MICRO_BATCH, SEQ_LENGTH), torch.int64),
        "labels": ((MICRO_BATCH, SEQ_LENGTH), torch.int64),
        "loss_mask": ((MICRO_BATCH, SEQ_LENGTH), torch.float32),
        "position_ids": ((MICRO_BATCH, SEQ_LENGTH), torch.int64),
    }
    assert torch.equal(batch["tokens"][:, 1:], batch["labels"][:, :-1])  # labels: next token
    assert torch.equal(batch["position_ids"][0], torch.arange(SEQ_LENGTH))


def test_same_seed_same_batches_other_seed_other_batches(data_cfg, prepared):
    assert_same(run([loader(data_cfg, prepared)], 3), run([loader(data_cfg, prepared)], 3))
    other = run([loader(data_cfg, prepared, seed=99)], 1)[0]
    assert not torch.equal(run([loader(data_cfg, prepared)], 1)[0]["tokens"], other["tokens"])


@pytest.mark.parametrize("dp_size", [2, 4])
def test_dp_slices_add_up_to_the_dp1_batch(data_cfg, prepared, dp_size):
    ranks = [loader(data_cfg, prepared, r, dp_size) for r in range(dp_size)]
    assert_same(run(ranks, 3), run([loader(data_cfg, prepared)], 3))


@pytest.mark.parametrize("dp_before,dp_after", [(1, 2), (2, 1)])
def test_resume_continues_exactly_also_with_another_dp_size(data_cfg, prepared, dp_before, dp_after):
    reference = run([loader(data_cfg, prepared)], 5)
    before = [loader(data_cfg, prepared, r, dp_before) for r in range(dp_before)]
    run(before, 2)
    state = before[0].state_dict()
    assert state["consumed_samples"] == 2 * GLOBAL_BATCH
    after = [loader(data_cfg, prepared, r, dp_after) for r in range(dp_after)]
    for rank_loader in after:
        rank_loader.load_state_dict(state)
    assert_same(run(after, 3), reference[2:])


def test_longer_run_only_appends_samples(prepared):
    # A small validation corpus at seq 256 spans several epochs within a few hundred samples, and a
    # two-corpus blend exercises the blending index too.
    tokenizer = CodeTokenizer(prepared.tokenizer_model)
    blend = [(3.0, prepared.train_blend[0][1]), (1.0, prepared.valid_blend[0][1])]
    short = BlendedStream(blend, seed=5, seq_length=256, split="train", tokenizer=tokenizer, initial_plan=40)
    long = BlendedStream(blend, seed=5, seq_length=256, split="train", tokenizer=tokenizer, initial_plan=100_000)
    num_train_shards = len(list_shards(blend[0][1]))
    valid_samples_per_epoch = sum(s.samples_per_epoch for s in short.shards[num_train_shards:])
    total = 5 * valid_samples_per_epoch * 4  # the valid corpus (1/4 of the blend) wraps ~5 times
    assert total > 40
    for index in range(total):  # the short plan is extended on the fly, several times
        assert numpy.array_equal(short.sample(index), long.sample(index)), index
    counts = numpy.bincount([short.locate(i)[0] for i in range(total)], minlength=len(short.shards))
    corpus_share = counts[:num_train_shards].sum() / total
    assert abs(corpus_share - 0.75) < 0.01  # the blend weights hold


def test_valid_held_out_batch_is_fixed(data_cfg, prepared):
    valid = loader(data_cfg, prepared, split="valid")
    held_out = global_batch([valid.held_out_batch()])
    run([valid], 2)
    assert_same([global_batch([valid.held_out_batch()])], [held_out])
    assert valid.stream.shards[0].split.name == "valid"


def test_several_held_out_batches_are_validation_batches_0_to_n_in_order(data_cfg, prepared):
    valid = loader(data_cfg, prepared, split="valid")
    three = valid.held_out_batch(3)
    assert len(three) == 3 * GLOBAL_BATCH // MICRO_BATCH
    assert_same([global_batch([three])],
                [global_batch([valid.micro_batches_at(b * GLOBAL_BATCH) for b in range(3)])])
    assert_same([global_batch([three[:GLOBAL_BATCH // MICRO_BATCH]])],
                [global_batch([valid.held_out_batch()])])  # batch 0 first: eval.batches=1 as before


def test_held_out_batches_that_would_repeat_a_validation_sample_are_refused(data_cfg, prepared):
    # at seq 256 the small validation corpus holds a few dozen samples per epoch
    valid = loader(data_cfg, prepared, split="valid", seq_length=256)
    distinct = sum(shard.samples_per_epoch for shard in valid.stream.shards)
    assert valid.stream.first_repeat(distinct) is None
    assert valid.stream.first_repeat(distinct + 1) == distinct
    too_many = distinct // GLOBAL_BATCH + 1
    with pytest.raises(DataConfigError, match=rf"eval.batches={too_many} asks for "
                                              rf"{too_many * GLOBAL_BATCH} valid samples .* hold "
                                              rf"{distinct} before a sample repeats; use "
                                              rf"eval.batches={distinct // GLOBAL_BATCH} or less"):
        valid.held_out_batch(too_many)
    assert len(valid.held_out_batch(distinct // GLOBAL_BATCH)) == \
        distinct // GLOBAL_BATCH * GLOBAL_BATCH // MICRO_BATCH


def test_resume_refuses_changed_data_unless_allowed(data_cfg, prepared):
    state = loader(data_cfg, prepared).state_dict()
    with pytest.raises(FingerprintMismatch, match="seq_length: 32 -> 64.*allow_fingerprint_change"):
        loader(data_cfg, prepared, seq_length=64).load_state_dict(state)
    changed_blend = PreparedData(prepared.tokenizer_model, prepared.valid_blend, prepared.valid_blend)
    with pytest.raises(FingerprintMismatch, match="data:"):
        loader(data_cfg, changed_blend).load_state_dict(state)
    data_cfg.allow_fingerprint_change = True
    state["consumed_samples"] = 24
    resumed = loader(data_cfg, prepared, seq_length=64)
    resumed.load_state_dict(state)
    assert resumed.consumed_samples == 24
