"""Async vs synchronous checkpoint saves: what a save costs the training loop, side by side.

    python bench/bench_checkpoint.py [--steps 40] [--interval 2] [hydra overrides ...]

Runs the trainer three times in fresh processes (no saves, checkpoint.async_save=false, =true) on
the same model and data, and reports per mode: the training loop's wall time, the time the loop
spent blocked in save calls (sync: the whole write; async: copying the state out, forking the
writer, waiting for the previous save) and in finalizing async saves (verify, rename, `latest`),
and the cost per step relative to the run without saves. Defaults: a ~2M-parameter PLT on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = ["model.num_layers=4", "model.hidden_size=256", "model.num_attention_heads=4",
         "model.num_query_groups=2", "model.ffn_hidden_size=704", "model.vocab_size=640"]
TRAIN = ["train.seq_length=64", "train.global_batch_size=4", "train.micro_batch_size=2",
         "train.warmup_steps=2", "logging.interval=10", "eval.interval=0",
         "logging.wandb.mode=disabled", "sample.max_new_tokens=0", "diagnostics.interval=0",
         "data.stdlib_max_files=40", "data.vocab_size=600", "checkpoint.keep=2"]


def worker(out_path: str, overrides: list) -> None:
    """One run in this process, with timers around the save and finalize calls."""
    sys.path.insert(0, REPO)
    from pretrain import train, trainer
    from pretrain.checkpoint import Checkpointer
    from pretrain.config import compose

    timings = {"save_s": 0.0, "saves": 0, "finalize_s": 0.0, "loop_s": 0.0}
    in_save = []  # a save first finalizes the previous one: that time is the save's, not counted twice

    def timed(fn, key, count=None):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            outermost = not in_save
            if count:
                in_save.append(True)
            try:
                return fn(*args, **kwargs)
            finally:
                if count:
                    in_save.pop()
                if count or outermost:
                    timings[key] += time.perf_counter() - started
                if count:
                    timings[count] += 1
        return wrapper

    Checkpointer.save_now = timed(Checkpointer.save_now, "save_s", "saves")
    Checkpointer.finalize = timed(Checkpointer.finalize, "finalize_s")
    trainer.Trainer._loop = timed(trainer.Trainer._loop, "loop_s")
    cfg = compose(overrides)
    assert train.run(cfg) == 0
    with open(out_path, "w") as stream:
        json.dump(timings, stream)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--interval", type=int, default=2)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args, overrides = parser.parse_known_args()
    if args.worker:
        return worker(args.worker, overrides)

    work = tempfile.mkdtemp(prefix="bench-checkpoint-")
    common = MODEL + TRAIN + [f"train.max_steps={args.steps}", f"data.cache_dir={work}/cache",
                              "train.decay_steps=100", *overrides]
    modes = {
        "no saves": ["checkpoint.interval=0", "checkpoint.save_final=false"],
        "sync": [f"checkpoint.interval={args.interval}", "checkpoint.async_save=false"],
        "async": [f"checkpoint.interval={args.interval}", "checkpoint.async_save=true"],
    }
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", WANDB_MODE="disabled")
    results = {}
    # The data cache is built by the first run; run "no saves" twice so no run pays for it.
    for mode in ["no saves", *modes]:
        out = os.path.join(work, "timings.json")
        command = [sys.executable, os.path.abspath(__file__), "--worker", out, *common, *modes[mode],
                   f"run_dir={work}/{mode.replace(' ', '_')}"]
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{mode} run failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
        with open(out) as stream:
            results[mode] = json.load(stream)

    base = results["no saves"]["loop_s"]
    print(f"{args.steps} steps, a save every {args.interval} ({args.steps // args.interval} saves); "
          f"folder {work}")
    print(f"{'mode':>9} {'loop s':>8} {'per step ms':>12} {'+ms/step':>9} {'blocked/save ms':>16} "
          f"{'finalize ms':>12}")
    for mode, r in results.items():
        per_step = r["loop_s"] / args.steps * 1e3
        extra = (r["loop_s"] - base) / args.steps * 1e3
        per_save = r["save_s"] / r["saves"] * 1e3 if r["saves"] else 0.0
        print(f"{mode:>9} {r['loop_s']:8.2f} {per_step:12.1f} {extra:9.1f} {per_save:16.1f} "
              f"{r['finalize_s'] * 1e3:12.1f}")
    sync, async_ = results["sync"]["loop_s"] - base, results["async"]["loop_s"] - base
    if sync > 0:
        print(f"async save costs the loop {async_ / sync:.2f}x what a synchronous save costs")


if __name__ == "__main__":
    main()
