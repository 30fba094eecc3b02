"""Deduplication, with datatrove's own steps: exact first, then near duplicates by MinHash.

Exact (content hash): `ExactDedupSignature` hashes each kept document's UTF-8 bytes (64-bit xxhash)
in the filter stage; `ExactFindDedups` merges all tasks' sorted hashes (--exact-dedup-tasks split
the hash range); `ExactDedupFilter` drops all copies but one. Which copy survives is datatrove's
choice (by hash order and document index), the same on every run; the copies are identical.

Near (MinHash LSH, MinhashSettings in plan.py): `MinhashDedupSignature` over the exact-deduplicated
documents, `MinhashDedupBuckets` (one task per band, or several per band), `MinhashDedupCluster`
(union-find over the candidate pairs, one task), `MinhashDedupFilter` keeps one document per
cluster. The documents are compared as sets of word 5-grams where a word is an identifier, keyword
or number (`CodeWords`), after datatrove's normalization (lower case, numbers -> 0, punctuation
and underscores -> spaces): reformatting, comment punctuation and case do not change a shingle;
a renamed identifier changes every 5-gram it is part of.

MinHash runs after exact dedup, on its survivors: a cluster must not keep a copy that exact dedup
removed (the two stages would then drop every member of a group).
"""

import os
import re

from datatrove.pipeline.dedup import (
    MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature,
)
from datatrove.pipeline.dedup.exact_dedup import (
    ExactDedupConfig, ExactDedupFilter, ExactDedupSignature, ExactFindDedups,
)
from datatrove.pipeline.dedup.minhash import MinhashConfig
from datatrove.utils.hashing import HashConfig
from datatrove.utils.word_tokenizers import WordTokenizer

from data.curation.plan import CorpusPlan

WORD = re.compile(r"\w+")


class CodeWords(WordTokenizer):
    """Words of source code for shingling: runs of letters, digits and underscores (datatrove's
    language tokenizers need NLTK or spaCy models and split prose, not code)."""

    def __init__(self):
        super().__init__("code")

    def word_tokenize(self, text: str) -> list:
        return WORD.findall(text)

    def sent_tokenize(self, text: str) -> list:
        return [line for line in text.splitlines() if line.strip()]

    def span_tokenize(self, text: str) -> list:
        return [match.span() for match in re.finditer(r"[^\n]*\S[^\n]*", text)]


def document_bytes(document) -> bytes:
    # The return annotation tells datatrove what the hash function gets: xxhash 4 (the version
    # `datasets` installs) hashes bytes only.
    return document.text.encode("utf-8", "surrogatepass")


def _exact_config() -> ExactDedupConfig:
    return ExactDedupConfig(content_getter=document_bytes)


def _folder(plan: CorpusPlan, *parts: str) -> str:
    return os.path.join(plan.work_dir, *parts)


def exact_signature(plan: CorpusPlan) -> ExactDedupSignature:
    return ExactDedupSignature(_folder(plan, "exact", "sigs"), _exact_config(),
                               finder_workers=plan.exact_dedup_tasks)


def exact_find(plan: CorpusPlan) -> ExactFindDedups:
    return ExactFindDedups(_folder(plan, "exact", "sigs"), _folder(plan, "exact", "dups"),
                           _exact_config())


class ExactDuplicates(ExactDedupFilter):
    name = "exact duplicates"


class NearDuplicates(MinhashDedupFilter):
    name = "near duplicates"


def exact_filter(plan: CorpusPlan, exclusion_writer=None) -> ExactDedupFilter:
    return ExactDuplicates(_folder(plan, "exact", "dups"), _exact_config(), exclusion_writer)


def minhash_config(plan: CorpusPlan) -> MinhashConfig:
    settings = plan.near_dedup
    # Shingles are hashed with sha1 (64 bits), not datatrove's default xxhash: datatrove 0.10.1 passes
    # them as str, which xxhash 4 refuses.
    return MinhashConfig(n_grams=settings.n_grams, num_buckets=settings.num_buckets,
                         hashes_per_bucket=settings.hashes_per_bucket, seed=settings.seed,
                         hash_config=HashConfig(precision=64, hash_fc="sha1"))


def minhash_signature(plan: CorpusPlan) -> MinhashDedupSignature:
    return MinhashDedupSignature(_folder(plan, "minhash", "sigs"), minhash_config(plan),
                                 language=CodeWords())


def minhash_buckets(plan: CorpusPlan) -> MinhashDedupBuckets:
    return MinhashDedupBuckets(_folder(plan, "minhash", "sigs"), _folder(plan, "minhash", "buckets"),
                               config=minhash_config(plan))


def minhash_cluster(plan: CorpusPlan) -> MinhashDedupCluster:
    return MinhashDedupCluster(_folder(plan, "minhash", "buckets"), _folder(plan, "minhash", "remove"),
                               config=minhash_config(plan))


def minhash_filter(plan: CorpusPlan, exclusion_writer=None) -> MinhashDedupFilter:
    return NearDuplicates(_folder(plan, "minhash", "remove"), exclusion_writer=exclusion_writer)
