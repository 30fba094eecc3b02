"""Code corpora at cluster scale: filtering, deduplication and tokenization as datatrove pipelines.

    python -m scripts.process_corpus --input repos/ dumps/*.jsonl --tokenizer tok.model \
        --output data/code --executor local --tasks 8 --workers 2

The stages (datatrove executors chained by `depends`; every task leaves a completion marker, so a
re-run does only the tasks that did not finish):

    filter          (tasks)    read the inputs, code filters, write the kept documents
                               (<work>/filtered/<rank>.parquet), exact-dedup signatures
    exact_find      (1..K)     duplicate content hashes across all tasks (datatrove ExactFindDedups)
    minhash_sign    (tasks)    MinHash signatures of the exact-deduplicated documents
    minhash_buckets (buckets)  candidate pairs per LSH band (datatrove MinhashDedupBuckets)
    minhash_cluster (1)        union-find over the pairs: one document kept per cluster
    tokenize        (tasks)    drop the duplicates, tokenize with CodeTokenizer (EOD after every
                               document), one megatron indexed shard per task
    finalize        (1)        publish the non-empty shards as <prefix>-0000i-of-0000N.{bin,idx},
                               write <prefix>.json (the manifest scripts/preprocess.py writes) and
                               <prefix>.stats.json, print the statistics table

Modules, one job each: `plan` (the settings fixed at the first run), `listing` (the input files,
listed once), `readers` (inputs and the work folder's intermediate parquet), `skips` (what the
readers skip, by name: counted, warned, listed), `filters` (the code filters and their
thresholds), `dedup` (exact and MinHash steps), `shards` (tokenization and publication), `stats`
(counting and the table), `stages` (the stage list), `executors` (local / SLURM), `output_lock`
(one writer per output), `pipeline` (all of it, for scripts/process_corpus.py).

Test hook: LOOPCODER_CORPUS_KILL_AT=<stage>:<rank>:<documents> makes that task SIGKILL itself after
writing that many documents (tests of resumption; shards.py).
"""
