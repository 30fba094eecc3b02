"""`prepare_data(cfg, seq_length) -> PreparedData`: make sure tokenizer and tokenized shards exist.

With `data.blend` set, it only checks the given shards and tokenizer. With it empty (the embedded job),
the first call builds, under `<data.cache_dir>/stdlib-py<X.Y>-<selection hash>/`:

    tokenizer-v<vocab_size>.model        sentencepiece BPE trained on the train split
    tokens-<tokenizer sha>/train-0000i-of-0000N.{bin,idx,check.json}, train.json (manifest), valid-...
    hf/                                  datasets' Arrow cache of the source files
    .lock

Every later call only checks the files (a stat and each shard's cached full check: milliseconds).
Several ranks: every rank may call it; the first to take the file lock builds, the others wait on the
lock and then find everything done (this also works with a node-local cache dir: one builder per
node). When torch.distributed is initialized, all ranks then meet at a barrier, so call it on every
rank.

A full disk (or quota) while building: a data error (exit 3) naming the cache and the fix; the temp
files of the unfinished writes are removed, and what is complete is only ever complete (the
tokenizer and each shard are renamed into place when whole; a manifest without a token count
marks an unfinished split).
"""

import glob
import hashlib
import json
import logging
import os
import re
import sys
from dataclasses import dataclass
from typing import List

import torch
from filelock import FileLock

from data.config import DataConfig
from data.corpus import stdlib_corpus
from data.errors import DataError, MissingDataError, ShardError, disk_full
from data.indexed import (
    check_manifest, check_shard, list_shards, manifest_path, preprocess, read_manifest,
)
from data.tokenizer import CodeTokenizer, train_tokenizer

logger = logging.getLogger(__name__)


@dataclass
class PreparedData:
    tokenizer_model: str
    train_blend: List  # [[weight, prefix], ...] as in data.blend
    valid_blend: List


def stdlib_cache_root(cfg: DataConfig) -> str:
    selection = json.dumps([sorted(cfg.stdlib_exclude_dirs), cfg.stdlib_valid_fraction,
                            cfg.stdlib_max_files])
    tag = hashlib.sha256(selection.encode()).hexdigest()[:8]
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    return os.path.join(cfg.cache_dir, f"stdlib-py{version}-{tag}")


def _is_complete(prefix: str) -> bool:
    try:
        with open(manifest_path(prefix)) as stream:
            if json.load(stream).get("num_tokens") is None:
                return False  # an interrupted run: preprocess() resumes it shard by shard
        for shard in list_shards(prefix):
            check_shard(shard)
        return True
    except (OSError, DataError, ValueError):
        return False


def _build_stdlib(cfg: DataConfig, root: str) -> PreparedData:
    corpus = None
    tokenizer_model = cfg.tokenizer_model or os.path.join(root, f"tokenizer-v{cfg.vocab_size}.model")
    if not os.path.isfile(tokenizer_model):
        if cfg.tokenizer_model:
            raise MissingDataError(f"data.tokenizer_model={cfg.tokenizer_model!r} does not exist; give "
                                   f"the path of a sentencepiece .model, or leave it empty to train the "
                                   f"stdlib tokenizer")
        corpus = stdlib_corpus(cfg.stdlib_exclude_dirs, cfg.stdlib_valid_fraction,
                               cfg.stdlib_max_files, cache_dir=os.path.join(root, "hf"))
        logger.info("training the %d-token tokenizer on %d stdlib files", cfg.vocab_size,
                    len(corpus["train"]))
        texts = (text for batch in corpus["train"].iter(batch_size=64) for text in batch["text"])
        train_tokenizer(texts, tokenizer_model, cfg.vocab_size, num_threads=max(1, cfg.num_workers))
    tokenizer = CodeTokenizer(tokenizer_model)
    tokens_dir = os.path.join(root, f"tokens-{tokenizer.sha256[:12]}")
    blends = {}
    for split in ("train", "valid"):
        prefix = os.path.join(tokens_dir, split)
        if not _is_complete(prefix):
            if corpus is None:
                corpus = stdlib_corpus(cfg.stdlib_exclude_dirs, cfg.stdlib_valid_fraction,
                                       cfg.stdlib_max_files, cache_dir=os.path.join(root, "hf"))
            preprocess(corpus[split], tokenizer_model, prefix, num_shards=cfg.num_shards,
                       num_workers=cfg.num_workers)
        blends[split] = [[1.0, prefix]]
    return PreparedData(tokenizer_model, blends["train"], blends["valid"])


def _partial_files(root: str) -> List[str]:
    """Files a write in progress leaves under the cache: `<name>.tmp<pid>` and `<prefix>.tmp<pid>.bin`
    (tokenizer, shards, manifests, shard checks), in the cache root and its tokens-* folders."""
    found = []
    for folder in [root] + glob.glob(os.path.join(glob.escape(root), "tokens-*")):
        found += [path for path in glob.glob(os.path.join(glob.escape(folder), "*.tmp*"))
                  if re.search(r"\.tmp\d+(\.[a-z]+)?$", path)]
    return found


def _build_with_cleanup(cfg: DataConfig, root: str) -> PreparedData:
    """_build_stdlib; when it fails (a full disk, a kill), the temp files of its writes are removed:
    every finished file was renamed into place, an unfinished one is never taken as done."""
    try:
        return _build_stdlib(cfg, root)
    except BaseException:
        for path in _partial_files(root):
            try:
                os.remove(path)
            except OSError:
                pass
        raise


def _check_user_blend(cfg: DataConfig, seq_length: int) -> PreparedData:
    tokenizer = CodeTokenizer(cfg.tokenizer_model)
    for weight, prefix in list(cfg.blend) + list(cfg.valid_blend):
        check_manifest(prefix, tokenizer)
        manifest = read_manifest(prefix)
        if manifest is not None and manifest["num_tokens"] is None:
            raise ShardError(f"{prefix} is unfinished: its manifest {manifest_path(prefix)} has no "
                             f"token count yet (the run writing it was stopped, e.g. by a full "
                             f"disk); re-run the scripts/preprocess.py or scripts.process_corpus "
                             f"command that makes it: finished shards are kept")
        num_tokens = sum(check_shard(shard, tokenizer.vocab_size) for shard in list_shards(prefix))
        if num_tokens < seq_length + 1:
            raise DataError(f"{prefix!r} holds {num_tokens} tokens, fewer than one sample of "
                             f"train.seq_length+1={seq_length + 1}")
    return PreparedData(cfg.tokenizer_model, [list(p) for p in cfg.blend],
                        [list(p) for p in cfg.valid_blend])


def prepare_data(cfg: DataConfig, seq_length: int) -> PreparedData:
    """Raises a DataError (data/errors.py) naming the file or key and the fix."""
    cfg.validate(reads_valid_blend=False)
    if cfg.blend:
        prepared = _check_user_blend(cfg, seq_length)
    else:
        root = stdlib_cache_root(cfg)
        try:
            os.makedirs(root, exist_ok=True)
            with FileLock(os.path.join(root, ".lock")):
                prepared = _build_with_cleanup(cfg, root)
        except OSError as error:
            full = disk_full(error, f"the data cache {root}", f"free space there or set "
                             f"data.cache_dir to a disk with room, then start again (what was "
                             f"finished is kept; nothing half-written is taken as done)")
            if full is None:
                raise
            raise full from None
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    return prepared
