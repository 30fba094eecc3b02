"""Step time of TP=2 and PP=2 against one process, with the share of time spent in communication.

    python -m bench.bench_parallel [--presets plt_tiny,plt_125m] [--steps 4] [--seq 128]

For each preset one run measures three layouts in turn (1 process; TP=2; PP=2 with the loops as
virtual chunks), each as `torchrun -m bench.bench_parallel --worker ...` on the real default data,
the trainer's own engine and R=2. A worker times full optimizer steps and, around every
torch.distributed call the step makes (collectives, and the waits of point-to-point sends and
receives), the seconds spent blocked in it: the "communication share". Blocked time includes waiting
for the peer, so for PP it also holds the pipeline bubble. Prints median step time, its ratio to one
process, and the share. On a 2-core machine two processes also compete for the cores: read the
ratios as this machine's, not a cluster's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

LAYOUTS = {"single": (1, []), "tp2": (2, ["parallel.tp=2"]), "pp2": (2, ["parallel.pp=2"])}


class CommTimer:
    """Wraps torch.distributed's calls (megatron looks them up at call time) to sum blocked time."""

    NAMES = ("all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter_tensor",
             "broadcast", "barrier", "send", "recv", "batch_isend_irecv", "isend", "irecv")

    def __init__(self):
        import torch.distributed as dist

        self.seconds = 0.0
        for name in self.NAMES:
            if hasattr(dist, name):
                setattr(dist, name, self._timed(getattr(dist, name)))

    def _timed(self, fn):
        timer = self

        class TimedWork:  # async handles: the time passes in wait()
            def __init__(self, work):
                self.work = work

            def wait(self, *args, **kwargs):
                started = time.perf_counter()
                try:
                    return self.work.wait(*args, **kwargs)
                finally:
                    timer.seconds += time.perf_counter() - started

            def __getattr__(self, name):
                return getattr(self.work, name)

        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                out = fn(*args, **kwargs)
            finally:
                timer.seconds += time.perf_counter() - started
            if isinstance(out, list):
                return [TimedWork(w) for w in out]
            return TimedWork(out) if out is not None and hasattr(out, "wait") else out

        return wrapper


def worker(args):
    from omegaconf import OmegaConf

    from pretrain.config import compose, validate
    from pretrain.distributed import env_world

    overrides = [f"model={args.preset}", "model.num_loops=2", f"train.seq_length={args.seq}",
                 "train.global_batch_size=4", "train.micro_batch_size=2",
                 f"model.max_position_embeddings={max(args.seq, 1024)}", *args.layout]
    cfg = OmegaConf.to_object(compose(["run_dir=/tmp/unused", *overrides]))

    import torch
    from data.loader import build_loader
    from data.prepare import prepare_data
    from megatron.core import parallel_state
    from pretrain.distributed import init_distributed
    from pretrain.engines.megatron import MegatronEngine

    train = cfg.train
    layout = validate(cfg, env_world()[1])
    world = init_distributed(layout, train.seed, cfg.parallel.backend)
    loader = build_loader(cfg.data, prepare_data(cfg.data, train.seq_length), "train",
                          train.seq_length,
                          train.global_batch_size, train.micro_batch_size,
                          parallel_state.get_data_parallel_rank(),
                          parallel_state.get_data_parallel_world_size(), train.seed)
    torch.manual_seed(train.seed)
    engine = MegatronEngine(cfg, world.device, layout)
    timer = CommTimer()
    step_times, comm_times = [], []
    for step in range(args.steps + 1):  # the first step warms up
        batches = next(loader)
        timer.seconds = 0.0
        started = time.perf_counter()
        engine.train_step(batches)
        if step:
            step_times.append(time.perf_counter() - started)
            comm_times.append(timer.seconds)
    if world.rank == 0:
        with open(args.out, "w") as stream:
            json.dump({"step_s": statistics.median(step_times),
                       "comm_s": statistics.median(comm_times)}, stream)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="plt_tiny,plt_125m")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--preset", help=argparse.SUPPRESS)
    parser.add_argument("--layout", nargs="*", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    from pretrain.distributed import free_port

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    print(f"R=2, seq {args.seq}, global batch 4 (micro 2), median of {args.steps} steps, "
          "1 thread per process")
    print(f"{'preset':>9} {'layout':>7} {'s/step':>8} {'vs single':>10} {'comm share':>11}")
    for preset in args.presets.split(","):
        base = None
        for name, (nproc, layout) in LAYOUTS.items():
            out = tempfile.mktemp(suffix=".json")
            cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                   f"--master_port={free_port()}", "-m", "bench.bench_parallel", "--worker", "--preset", preset,
                   "--steps", str(args.steps), "--seq", str(args.seq), "--out", out,
                   "--layout", *layout]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stderr[-2000:])
                raise SystemExit(f"{preset} {name} failed")
            with open(out) as stream:
                result = json.load(stream)
            base = base or result["step_s"]
            share = result["comm_s"] / result["step_s"] if nproc > 1 else 0.0
            print(f"{preset:>9} {name:>7} {result['step_s']:>8.3f} "
                  f"{result['step_s'] / base:>10.2f} {share:>10.0%}")


if __name__ == "__main__":
    main()
