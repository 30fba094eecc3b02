"""The pipeline as a list of datatrove stages, built from a CorpusPlan (the table is in __init__.py).

A stage is one datatrove executor: a list of steps run by `tasks` independent tasks. Switching a
dedup off (plan.exact_dedup / plan.near_dedup) removes its stages and its filter step.
"""

import math
from dataclasses import dataclass
from typing import List

from data.curation.dedup import (
    exact_filter, exact_find, exact_signature, minhash_buckets, minhash_cluster, minhash_filter,
    minhash_signature,
)
from data.curation.filters import code_filters
from data.curation.plan import CorpusPlan
from data.curation.readers import (
    RankParquetReader, filtered_folder, filtered_writer, input_readers, removed_writer,
)
from data.curation.shards import MegatronShardWriter, PublishShards, shards_folder
from data.curation.stats import Tally

@dataclass
class Stage:
    name: str
    pipeline: list
    tasks: int
    # SLURM: tasks run one after another by each array job (many short tasks, fewer job starts).
    tasks_per_job: int = 1


def build_stages(plan: CorpusPlan) -> List[Stage]:
    def removed(group: str):
        return removed_writer(plan, group)

    reading = [*input_readers(plan), Tally("read")]
    if plan.filters:
        reading += code_filters(plan.filters, removed)
    reading += [Tally("filtered"), filtered_writer(plan)]
    if plan.exact_dedup:
        reading.append(exact_signature(plan))
    stages = [Stage("filter", reading, plan.tasks)]

    if plan.exact_dedup:
        stages.append(Stage("exact_find", [exact_find(plan)], plan.exact_dedup_tasks))
    if plan.near_dedup:
        signing = [RankParquetReader(filtered_folder(plan))]
        if plan.exact_dedup:
            signing.append(exact_filter(plan))  # the same documents, indices as in the tokenize stage
        signing.append(minhash_signature(plan))
        buckets = plan.near_dedup.num_buckets
        stages += [
            Stage("minhash_sign", signing, plan.tasks),
            Stage("minhash_buckets", [minhash_buckets(plan)], buckets,
                  tasks_per_job=math.ceil(buckets / plan.tasks)),
            Stage("minhash_cluster", [minhash_cluster(plan)], 1),
        ]

    tokenizing = [RankParquetReader(filtered_folder(plan))]
    if plan.exact_dedup:
        tokenizing += [exact_filter(plan, removed("exact_duplicates")), Tally("exact_dedup")]
    if plan.near_dedup:
        tokenizing += [minhash_filter(plan, removed("near_duplicates")), Tally("near_dedup")]
    tokenizing.append(MegatronShardWriter(plan.tokenizer_model, plan.tokenizer_sha256, shards_folder(plan)))
    stages += [
        Stage("tokenize", tokenizing, plan.tasks),
        Stage("finalize", [PublishShards(plan, ["filter", "tokenize"])], 1),
    ]
    return stages
