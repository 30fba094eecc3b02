"""The global sample order: an endless, deterministic stream of packed samples from a weighted blend.

Global sample g -> (shard, its sample j) -> (epoch j // samples_per_epoch, position in that epoch).

Why not megatron's `BlendedMegatronDatasetBuilder` as is: it sizes every `GPTDataset` from the number
of samples requested (train.max_steps * global batch), and `GPTDataset` shuffles documents and samples
across all epochs at once with a single seed. Its cache key includes that number, so extending the run
on resume rebuilds the indices in another order and replays or skips data. Here instead:
- each shard is planned one epoch at a time: epoch e is megatron's own `GPTDataset` built for exactly
  one epoch (num_samples=None) with a seed derived from (seed, shard, e). Extending the run only
  appends epochs; planned epochs never change.
- the shards are interleaved by megatron's `build_blending_indices` (C++ helper), a greedy rule whose
  choice for sample g depends only on samples < g, so computing it for a longer run only appends.
Nothing depends on the run length, the global batch size or the data-parallel size.

The per-epoch indices are built in memory on every rank (no shared cache files, so no races between
ranks and nothing to go stale); for a shard that costs ~12 bytes per sample and a few ms per epoch.
"""

import hashlib
import logging
import os
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import numpy
from megatron.core.datasets import helpers
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.core.datasets.indexed_dataset import IndexedDataset
from megatron.core.datasets.utils import Split

from data.errors import DataConfigError, DataError
from data.indexed import check_manifest, check_shard, list_shards
from data.tokenizer import CodeTokenizer

logger = logging.getLogger(__name__)
# Megatron warns on every epoch built without a cache folder; here that is the design, not a problem.
logging.getLogger("megatron.core.datasets.gpt_dataset").addFilter(
    lambda record: "path_to_cache is None" not in record.getMessage())
EPOCHS_KEPT = 2  # a shard reads from at most two epochs around a boundary


def _megatron_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("megatron-core")
    except PackageNotFoundError:
        return "(version unknown)"


def derived_seed(*parts) -> int:
    """A 32-bit seed from any parts (numpy.RandomState needs < 2**32), stable across runs."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:4], "little")


class _MegatronTokenizerView:
    """The few attributes GPTDataset reads from a tokenizer (eod, pad, vocab size, cache identity)."""

    def __init__(self, tokenizer: CodeTokenizer):
        self.eod, self.pad, self.vocab_size = tokenizer.eod_id, tokenizer.pad_id, tokenizer.vocab_size
        self.unique_identifiers = {"class": "CodeTokenizer", "sha256": tokenizer.sha256}


class ShardEpochs:
    """One indexed dataset as an endless sequence of samples of seq_length+1 tokens, epoch by epoch."""

    def __init__(self, prefix: str, seed: int, seq_length: int, split: str, tokenizer: CodeTokenizer):
        self.prefix, self.seed, self.seq_length = prefix, seed, seq_length
        # The whole index and every token id against the tokenizer (cached per shard): a damaged
        # pointer or a foreign token id is refused here, not trained on or met at step 1.
        self.num_tokens = check_shard(prefix, tokenizer.vocab_size)
        self.indexed = IndexedDataset(prefix, mmap=True)  # mmap: memory stays flat with corpus size
        self.split = Split.valid if split == "valid" else Split.train
        # One epoch packs all tokens and drops the last partial sample (megatron's rule).
        self.samples_per_epoch = max(0, (self.num_tokens - 1) // seq_length)
        self._tokenizer_view = _MegatronTokenizerView(tokenizer)
        self._epochs: "OrderedDict[int, GPTDataset]" = OrderedDict()

    def _epoch(self, epoch: int) -> GPTDataset:
        if epoch not in self._epochs:
            config = GPTDatasetConfig(
                random_seed=derived_seed(self.seed, epoch),
                sequence_length=self.seq_length,
                tokenizer=self._tokenizer_view,
                reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False,
                create_attention_mask=False,
                # blend=None makes megatron treat the config as "mock", which is what keeps it
                # from writing index caches next to the data (see the module docstring).
                path_to_cache=None,
            )
            # GPTDataset's "documents" are sequence ids (it reads sequence_lengths[document]); a
            # megatron dataset made with sentence splitting has fewer documents than sequences.
            documents = numpy.arange(len(self.indexed.sequence_lengths), dtype=numpy.int32)
            dataset = GPTDataset(self.indexed, self.prefix, documents, None, self.split, config)
            if len(dataset) != self.samples_per_epoch:
                # The index passed check_shard, so the packing itself differs from the one this
                # code was written against: not the user's data.
                raise RuntimeError(
                    f"{self.prefix}: megatron-core {_megatron_version()} packed {len(dataset)} "
                    f"samples of {self.seq_length + 1} tokens from {self.num_tokens} tokens, this code "
                    f"expects {self.samples_per_epoch} (the shard's index passed its checks); install "
                    f"the megatron-core version pinned in setup.cfg")
            self._epochs[epoch] = dataset
            while len(self._epochs) > EPOCHS_KEPT:
                self._epochs.popitem(last=False)
        return self._epochs[epoch]

    def sample(self, index: int) -> numpy.ndarray:
        """Tokens of sample `index` (seq_length+1 of them: inputs plus the shifted last label)."""
        epoch, position = divmod(index, self.samples_per_epoch)
        # The raw token window, before GPTDataset turns it into tensors: FIM must see it first.
        # (A private method; megatron-core is pinned in setup.cfg and tests cover this call.)
        tokens, _ = self._epoch(epoch)._query_document_sample_shuffle_indices(position)
        return tokens


class BlendedStream:
    """Weighted blend of corpora: `sample(g)` for any global sample index g >= 0, forever."""

    def __init__(self, blend: Sequence[Tuple[float, str]], seed: int, seq_length: int, split: str,
                 tokenizer: CodeTokenizer, initial_plan: int = 1 << 16):
        if not blend:
            raise DataConfigError(f"empty {split} blend: give data.blend / data.valid_blend as "
                                  f"[[weight, prefix], ...]")
        self.shards: List[ShardEpochs] = []
        weights: List[float] = []
        for corpus_index, (weight, prefix) in enumerate(blend):
            if float(weight) <= 0:
                raise DataConfigError(f"blend weight {weight} for {prefix!r} must be > 0")
            check_manifest(prefix, tokenizer)
            shards = [ShardEpochs(p, derived_seed(seed, split, corpus_index, i), seq_length, split, tokenizer)
                      for i, p in enumerate(list_shards(prefix))]
            usable = [s for s in shards if s.samples_per_epoch > 0]
            for skipped in set(shards) - set(usable):
                logger.warning("%s holds %d tokens, less than one sample of %d: skipped",
                               skipped.prefix, skipped.num_tokens, seq_length + 1)
            if not usable:
                raise DataError(f"{prefix!r} ({sum(s.num_tokens for s in shards)} tokens) cannot fill "
                                 f"one sample of seq_length+1={seq_length + 1} tokens; use a shorter "
                                 f"train.seq_length or more data")
            # Within a corpus, shards are drawn in proportion to their samples (one corpus, one
            # weight); across corpora, by the blend weight.
            corpus_samples = sum(s.samples_per_epoch for s in usable)
            for shard in usable:
                self.shards.append(shard)
                weights.append(float(weight) * shard.samples_per_epoch / corpus_samples)
        if len(self.shards) > numpy.iinfo(numpy.int16).max:
            raise DataError(f"{len(self.shards)} shards exceed megatron's blending limit of 32767; "
                            f"preprocess the corpora into fewer, larger shards (--shards)")
        self.weights = numpy.array(weights, dtype=numpy.float64) / sum(weights)
        self._planned = 0
        self._plan(max(1, initial_plan))

    def _plan(self, size: int) -> None:
        """(Re)compute the blend for the first `size` samples; earlier entries come out identical."""
        self._shard_of = numpy.zeros(size, dtype=numpy.int16)
        self._index_in_shard = numpy.zeros(size, dtype=numpy.int64)
        helpers.build_blending_indices(self._shard_of, self._index_in_shard, self.weights,
                                       len(self.shards), size, False)
        self._planned = size

    def locate(self, global_index: int) -> Tuple[int, int]:
        if global_index >= self._planned:
            self._plan(max(global_index + 1, 2 * self._planned))
        return int(self._shard_of[global_index]), int(self._index_in_shard[global_index])

    def first_repeat(self, count: int) -> Optional[int]:
        """The first global index below `count` whose sample repeats an earlier one (its shard read
        past one epoch), or None when samples 0..count-1 are all distinct."""
        self.locate(count - 1)
        epoch = numpy.array([shard.samples_per_epoch for shard in self.shards], dtype=numpy.int64)
        past = self._index_in_shard[:count] >= epoch[self._shard_of[:count]]
        return int(numpy.argmax(past)) if past.any() else None

    def sample(self, global_index: int) -> numpy.ndarray:
        shard, index = self.locate(global_index)
        return self.shards[shard].sample(index)

    def describe(self) -> Dict:
        """What the order depends on, for the loader's fingerprint."""
        # Basenames: moving the cache folder to another mount must not invalidate a resume.
        return {"shards": [(os.path.basename(s.prefix), s.num_tokens, len(s.indexed.document_indices) - 1)
                           for s in self.shards],
                "weights": [round(float(w), 12) for w in self.weights]}

    @property
    def samples_per_epoch(self) -> int:
        return sum(s.samples_per_epoch for s in self.shards)

