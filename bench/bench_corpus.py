"""Tokenization throughput, side by side in one run: the corpus pipeline's tokenize stage
(data/curation/, datatrove local executor) against Megatron-LM's tools/preprocess_data.py and
scripts/preprocess.py, with the same sentencepiece model, the same documents, the same worker count.

    .venv/bin/python bench/bench_corpus.py --megatron-lm PATH [--workers 2] [--copies 21]

The corpus is `--copies` copies of the Python standard library's sources (~10 MB each, 21 copies
~210 MB, so start-up does not dominate), every file given a distinct first line so exact dedup keeps
them all. Empty files are left out: Megatron-LM's script skips empty documents, the others would
store a lone EOD. A 4096-piece tokenizer is trained on one copy first (as `make train` does).

What is measured, for the whole command (start-up included): wall seconds; CPU seconds (user +
system of every process of its tree, sampled every 50 ms: on a shared machine the load-independent
figure); peak RSS (same sampling: the largest process, and the sum over the tree):
- megatron: `preprocess_data.py --input corpus.jsonl --tokenizer-type SentencePieceTokenizer
  --tokenizer-model M --append-eod --workers W` (its default single partition).
- preprocess.py: `python -m scripts.preprocess --corpus corpus.jsonl --shards W --workers W`.
- pipeline (tokenize stage): `python -m scripts.process_corpus` resumed with only the tokenize and
  finalize stages left to do (the earlier stages ran before, untimed): reads the filter stage's
  parquet, drops exact duplicates (none), tokenizes, writes W shards, publishes them.
- pipeline (all stages): the same command from scratch (--no-filters --no-near-dedup: all three
  tools must tokenize the same documents), reading W jsonl parts of the same corpus (datatrove
  shards by file).
Every tool must write exactly the same number of tokens; the bench checks it (the ids themselves:
tests/test_fast_encoder.py, tests/test_corpus_pipeline*.py). scripts/preprocess.py and the
pipeline encode with data/fast_encoder.py (sentencepiece's ids, kitoken's speed) when installed.

Megatron-LM is not on PyPI: `git clone https://github.com/NVIDIA/Megatron-LM` and check out the tag
of the installed megatron-core (core_v0.16.1), then pass the clone's path. Its script imports
`megatron.training`, whose __init__ pulls in the whole trainer (triton, Transformer Engine); the
bench runs the script unchanged with that package's __init__ skipped (only its tokenizer and
argument modules are used), with the clone after the installed megatron-core on sys.path. The
tokenizer module imports `six` (pip install six, or put it on PYTHONPATH).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import psutil

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("OMP_NUM_THREADS", "1")  # megatron imports torch here; it computes nothing

from data.config import DataConfig  # noqa: E402
from data.corpus import source_documents, stdlib_files, stdlib_root  # noqa: E402
from data.indexed import check_shard, list_shards  # noqa: E402
from data.tokenizer import CodeTokenizer, train_tokenizer  # noqa: E402

# Runs Megatron-LM's script with `megatron.training`'s package __init__ skipped (see the docstring).
MEGATRON_RUNNER = """
import importlib, os, runpy, sys, types
script = sys.argv[1]
clone = os.path.dirname(os.path.dirname(os.path.abspath(script)))
sys.path.append(clone)
import megatron
training = types.ModuleType("megatron.training")
training.__path__ = [os.path.join(clone, "megatron", "training")]
sys.modules["megatron.training"] = training
global_vars = importlib.import_module("megatron.training.global_vars")
for name in dir(global_vars):
    if name.startswith("get_"):
        setattr(training, name, getattr(global_vars, name))
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
"""


def build_corpus(workdir: str, copies: int, parts: int):
    """corpus.jsonl (all documents) and parts/part-i.jsonl (the same documents, in order, split in
    `parts` contiguous files); the texts of one copy (to train the tokenizer)."""
    files = stdlib_files(DataConfig().stdlib_exclude_dirs)
    texts = {document["path"]: document["text"] for document in source_documents(stdlib_root(), files)
             if document["text"]}
    total = copies * len(texts)
    os.makedirs(os.path.join(workdir, "parts"))
    part_streams = [open(os.path.join(workdir, "parts", f"part-{i:03d}.jsonl"), "w") for i in range(parts)]
    num_bytes = 0
    with open(os.path.join(workdir, "corpus.jsonl"), "w") as corpus:
        index = 0
        for copy in range(copies):
            for relpath, text in texts.items():
                document = f"# copy {copy} of {relpath}\n{text}"
                line = json.dumps({"text": document, "id": f"{copy}/{relpath}"}) + "\n"
                corpus.write(line)
                part_streams[index * parts // total].write(line)
                num_bytes += len(document.encode("utf-8"))
                index += 1
    for stream in part_streams:
        stream.close()
    return list(texts.values()), total, num_bytes


def measure(command: list, env: dict, cwd: str = REPO) -> dict:
    """Run `command`; wall seconds and peak RSS (largest process, sum over the process tree)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    root = psutil.Process(process.pid)
    peak_single = peak_tree = 0
    cpu = {}  # pid -> the last user+system seconds seen (a process is sampled until it ends)
    output = []
    reader = threading.Thread(target=lambda: output.extend(process.stdout), daemon=True)
    reader.start()
    while process.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            tree = []
        sizes = []
        for member in tree:
            try:
                with member.oneshot():
                    sizes.append(member.memory_info().rss)
                    times = member.cpu_times()
                cpu[(member.pid, member.create_time())] = times.user + times.system
            except psutil.Error:
                pass
        peak_single, peak_tree = max(peak_single, max(sizes, default=0)), max(peak_tree, sum(sizes))
        time.sleep(0.05)
    seconds = time.perf_counter() - start
    reader.join()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n{''.join(output)[-4000:]}")
    return {"seconds": seconds, "cpu_seconds": sum(cpu.values()), "rss_max_gb": peak_single / 2**30,
            "rss_tree_gb": peak_tree / 2**30, "output": "".join(output)}


def tokens_at(prefix: str) -> int:
    return sum(check_shard(shard) for shard in list_shards(prefix))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megatron-lm", required=True, help="a Megatron-LM clone (see above)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--copies", type=int, default=21, help="stdlib copies (~10 MB each)")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--workdir", default=None, help="default: a temp folder, removed at the end")
    args = parser.parse_args()
    script = os.path.join(args.megatron_lm, "tools", "preprocess_data.py")
    if not os.path.isfile(script):
        sys.exit(f"{script} not found: pass a Megatron-LM clone with --megatron-lm (see --help)")
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench-corpus-")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", HF_DATASETS_CACHE=os.path.join(workdir, "hf"))
    try:
        one_copy, num_documents, num_bytes = build_corpus(workdir, args.copies, args.workers)
        model = train_tokenizer(one_copy, os.path.join(workdir, "tok.model"), args.vocab_size)
        print(f"corpus: {num_documents} documents, {num_bytes / 1e6:.0f} MB ({args.copies} stdlib "
              f"copies); tokenizer vocab {args.vocab_size}; {args.workers} workers; "
              f"{os.cpu_count()} CPUs (shared machines give noisy figures); our encoder: "
              f"{CodeTokenizer(model).encoder_in_use} (Megatron-LM's: sentencepiece)", flush=True)
        corpus = os.path.join(workdir, "corpus.jsonl")
        runs = {}

        runner = os.path.join(workdir, "run_megatron.py")
        with open(runner, "w") as stream:
            stream.write(MEGATRON_RUNNER)
        megatron_prefix = os.path.join(workdir, "megatron", "corpus")
        os.makedirs(os.path.dirname(megatron_prefix))
        runs["megatron preprocess_data.py"] = measure(
            [sys.executable, runner, script, "--input", corpus, "--output-prefix", megatron_prefix,
             "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", model, "--append-eod",
             "--workers", str(args.workers), "--log-interval", "1000000"], env)
        runs["megatron preprocess_data.py"]["tokens"] = tokens_at(f"{megatron_prefix}_text_document")

        preprocess_prefix = os.path.join(workdir, "preprocess", "corpus")
        runs["scripts/preprocess.py"] = measure(
            [sys.executable, "-m", "scripts.preprocess", "--corpus", corpus, "--tokenizer", model,
             "--output", preprocess_prefix, "--shards", str(args.workers), "--workers", str(args.workers)], env)
        runs["scripts/preprocess.py"]["tokens"] = tokens_at(preprocess_prefix)

        pipeline_prefix = os.path.join(workdir, "pipeline", "corpus")
        pipeline = [sys.executable, "-m", "scripts.process_corpus", "--input",
                    os.path.join(workdir, "parts", "*.jsonl"), "--tokenizer", model, "--output",
                    pipeline_prefix, "--tasks", str(args.workers), "--workers", str(args.workers),
                    "--no-filters", "--no-near-dedup"]
        runs["pipeline, all stages"] = measure(pipeline, env)
        runs["pipeline, all stages"]["tokens"] = tokens_at(pipeline_prefix)
        # Again, with only the tokenize and finalize stages left to do.
        work = f"{pipeline_prefix}.work"
        for stage in ("tokenize", "finalize"):
            shutil.rmtree(os.path.join(work, "logs", stage))
        shutil.rmtree(os.path.join(work, "shards"))
        for name in os.listdir(os.path.dirname(pipeline_prefix)):
            if name.endswith((".bin", ".idx")):
                os.remove(os.path.join(os.path.dirname(pipeline_prefix), name))
        runs["pipeline, tokenize stage"] = measure(pipeline, env)
        runs["pipeline, tokenize stage"]["tokens"] = tokens_at(pipeline_prefix)

        counts = {name: run["tokens"] for name, run in runs.items()}
        if len(set(counts.values())) != 1:
            raise RuntimeError(f"the tools wrote different token counts: {counts}")
        megatron_rate = runs["megatron preprocess_data.py"]["tokens"] / runs["megatron preprocess_data.py"]["seconds"]
        megatron_cpu_rate = (runs["megatron preprocess_data.py"]["tokens"]
                             / runs["megatron preprocess_data.py"]["cpu_seconds"])
        print(f"{'':26} {'wall s':>7} {'M tok/s':>8} {'vs mlm':>7} {'CPU s':>7} {'M tok/CPU s':>11} "
              f"{'vs mlm':>7} {'RSS max':>8} {'RSS tree':>9}")
        for name, run in runs.items():
            rate, cpu_rate = run["tokens"] / run["seconds"], run["tokens"] / run["cpu_seconds"]
            print(f"{name:26} {run['seconds']:7.1f} {rate / 1e6:8.3f} {rate / megatron_rate:6.2f}x "
                  f"{run['cpu_seconds']:7.1f} {cpu_rate / 1e6:11.3f} {cpu_rate / megatron_cpu_rate:6.2f}x "
                  f"{run['rss_max_gb']:7.2f}G {run['rss_tree_gb']:8.2f}G")
        stage_line = [line for line in runs["pipeline, tokenize stage"]["output"].splitlines()
                      if line.startswith("stage seconds:")]
        print(f"{counts['megatron preprocess_data.py']} tokens each. The resumed pipeline's own "
              f"timing: {stage_line[0] if stage_line else '?'}")
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
