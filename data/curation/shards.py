"""The end of the pipeline: tokenization into megatron indexed shards, and their publication.

`MegatronShardWriter` (tokenize stage, one task per shard) encodes each surviving document with the
project's CodeTokenizer and appends EOD, exactly as scripts/preprocess.py does (data/indexed.py),
and writes `<work>/shards/<rank>.{bin,idx}` with megatron's IndexedDatasetBuilder, plus
`<rank>.ids` (the document ids in shard order, one JSON string a line). Files are written under a
temp name and renamed, .idx last: a task killed mid-way leaves no file that looks finished.

`PublishShards` (finalize stage, one task) numbers the non-empty task shards 0..N-1 and makes them
`<prefix>-0000i-of-0000N.{bin,idx}` (hard links into the work folder; a copy across file systems),
writes the manifest `<prefix>.json` with data/indexed.py's own writer, so `data.blend` and the
loader's fingerprint treat the output exactly like scripts/preprocess.py's, and writes the
statistics `<prefix>.stats.json`. Empty shards are left out because megatron cannot open them.
"""

import glob
import json
import os
import re
import shutil
import signal
from typing import List, Optional

import numpy
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.batching import batched
from datatrove.utils.logging import logger

from data.curation.plan import CorpusPlan, stage_dir
from data.curation.skips import collect_skips
from data.curation.stats import format_table, summarize, write_summary
from data.tokenizer import CodeTokenizer

KILL_HOOK = "LOOPCODER_CORPUS_KILL_AT"


def shards_folder(plan: CorpusPlan) -> str:
    return os.path.join(plan.work_dir, "shards")


def stats_path(plan: CorpusPlan) -> str:
    return f"{plan.output_prefix}.stats.json"


def _kill_point(stage: str, rank: int) -> Optional[int]:
    """Test hook: LOOPCODER_CORPUS_KILL_AT=<stage>:<rank>:<documents>."""
    value = os.environ.get(KILL_HOOK)
    if not value:
        return None
    try:
        hook_stage, hook_rank, documents = value.split(":")
        hook_rank, documents = int(hook_rank), int(documents)
    except ValueError:
        raise ValueError(f"{KILL_HOOK}={value!r}; the form is <stage>:<rank>:<documents>, "
                         f"e.g. tokenize:1:2") from None
    return documents if (hook_stage, hook_rank) == (stage, rank) else None


def _checked_tokenizer(model_path: str, sha256: str) -> CodeTokenizer:
    tokenizer = CodeTokenizer(model_path)
    if tokenizer.sha256 != sha256:
        raise RuntimeError(
            f"{model_path} changed since this run started (sha256 {tokenizer.sha256[:12]}, the run "
            f"planned {sha256[:12]}); restore it, or delete the work folder to start over"
        )
    return tokenizer


class MegatronShardWriter(PipelineStep):
    type = "🔢 - TOKENIZE"
    name = "megatron shard"

    def __init__(self, tokenizer_model: str, tokenizer_sha256: str, folder: str, batch_size: int = 256):
        super().__init__()
        self.tokenizer_model, self.tokenizer_sha256 = tokenizer_model, tokenizer_sha256
        self.folder, self.batch_size = folder, batch_size

    def run(self, data, rank: int = 0, world_size: int = 1):
        # megatron imports torch: only the tasks that write shards pay for it.
        import torch
        from megatron.core.datasets.indexed_dataset import DType, get_bin_path, get_idx_path
        torch.set_num_threads(1)
        tokenizer = _checked_tokenizer(self.tokenizer_model, self.tokenizer_sha256)
        dtype = DType.optimal_dtype(tokenizer.vocab_size)
        os.makedirs(self.folder, exist_ok=True)
        final = os.path.join(self.folder, f"{rank:05d}")
        for leftover in glob.glob(glob.escape(final) + ".tmp*"):  # from an attempt that was killed
            os.remove(leftover)
        tmp = f"{final}.tmp{os.getpid()}"
        try:
            self._write(data, tokenizer, dtype, tmp, rank)
        except BaseException:  # a full disk, a bad document: no temp file stays behind
            for partial in glob.glob(glob.escape(tmp) + "*"):
                os.remove(partial)
            raise
        os.replace(f"{tmp}.ids", f"{final}.ids")
        os.replace(get_bin_path(tmp), get_bin_path(final))
        os.replace(get_idx_path(tmp), get_idx_path(final))  # last: an .idx means the shard is whole

    def _write(self, data, tokenizer, dtype, tmp: str, rank: int) -> None:
        from megatron.core.datasets.indexed_dataset import (
            IndexedDatasetBuilder, get_bin_path, get_idx_path,
        )
        kill_after = _kill_point("tokenize", rank)
        builder = IndexedDatasetBuilder(get_bin_path(tmp), dtype=dtype)
        written = 0
        with open(f"{tmp}.ids", "w") as ids:
            for batch in batched(data or (), self.batch_size):
                with self.track_time(unit="batch"):
                    # Same calls as data/indexed.py's preprocess: encode_batch, then EOD appended.
                    encoded = tokenizer.encode_batch([document.text for document in batch])
                    for document, token_ids in zip(batch, encoded):
                        token_ids.append(tokenizer.eod_id)
                        builder.add_document(numpy.array(token_ids, dtype=dtype), [len(token_ids)])
                        ids.write(json.dumps(document.id) + "\n")
                        self.stat_update("documents")
                        self.stat_update("tokens", value=len(token_ids))
                        written += 1
                        if written == kill_after:
                            builder.data_file.flush()
                            ids.flush()
                            logger.warning(f"{KILL_HOOK}: task {rank} kills itself after {written} documents")
                            os.kill(os.getpid(), signal.SIGKILL)
        builder.finalize(get_idx_path(tmp))


def _link(source: str, target: str) -> None:
    """`target` becomes `source`'s content, atomically; a hard link when the file system allows."""
    if os.path.exists(target) and os.path.samefile(source, target):
        return
    tmp = f"{target}.tmp{os.getpid()}"
    try:
        try:
            os.link(source, tmp)
        except OSError:  # another file system, or no hard links there
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except OSError:  # a full disk while copying: no partial copy stays next to the outputs
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _stale_shards(prefix: str, num_shards: int) -> List[str]:
    pattern = re.compile(re.escape(os.path.basename(prefix)) + r"-\d{5}-of-(\d{5})\.(bin|idx)$")
    folder = os.path.dirname(os.path.abspath(prefix))
    return sorted(os.path.join(folder, name) for name in os.listdir(folder)
                  if (match := pattern.match(name)) and int(match.group(1)) != num_shards)


class PublishShards(PipelineStep):
    type = "📦 - PUBLISH"
    name = "shards, manifest and statistics"

    def __init__(self, plan: CorpusPlan, stages: List[str]):
        super().__init__()
        self.plan, self.stages = plan, stages

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        from megatron.core.datasets.indexed_dataset import get_bin_path, get_idx_path

        from data.indexed import _write_manifest, check_shard, shard_prefix

        plan = self.plan
        tokenizer = _checked_tokenizer(plan.tokenizer_model, plan.tokenizer_sha256)
        summary = summarize({stage: stage_dir(plan, stage) for stage in self.stages},
                            f"{MegatronShardWriter.type}: {MegatronShardWriter.name}")
        summary.update(collect_skips(plan.work_dir))
        write_summary(summary, stats_path(plan))
        logger.info(f"\n{format_table(summary)}")
        task_shards = [os.path.join(shards_folder(plan), f"{r:05d}") for r in range(plan.tasks)]
        tokens = [check_shard(shard) for shard in task_shards]
        nonempty = [shard for shard, count in zip(task_shards, tokens) if count > 0]
        if not nonempty:
            # Not a task failure: the run is complete and its answer is "nothing". The command
            # reads documents=0 from the statistics and says why, in one paragraph (pipeline.py).
            logger.warning(f"every document was removed, nothing to publish; see {stats_path(plan)}")
            return
        stale = _stale_shards(plan.output_prefix, len(nonempty))
        if stale:
            raise RuntimeError(f"{stale[0]} (and {len(stale) - 1} more) belong to an earlier run with "
                               f"another shard count; delete them, then re-run to publish")
        num_documents = 0
        for shard in nonempty:
            with open(f"{shard}.ids") as ids:
                num_documents += sum(1 for _ in ids)
        # First a manifest without a token count, as scripts/preprocess.py writes it: shards
        # published by a run that fails half-way (a full disk) are never taken as a whole output.
        _write_manifest(plan.output_prefix, tokenizer, len(nonempty), num_documents, None)
        for index, shard in enumerate(nonempty):
            target = shard_prefix(plan.output_prefix, index, len(nonempty))
            _link(get_bin_path(shard), get_bin_path(target))
            _link(get_idx_path(shard), get_idx_path(target))  # last: the .idx marks completion
        _write_manifest(plan.output_prefix, tokenizer, len(nonempty), num_documents, sum(tokens))
        logger.info(f"{len(nonempty)} shards, {num_documents} documents, {sum(tokens)} tokens at "
                    f"{plan.output_prefix}")
