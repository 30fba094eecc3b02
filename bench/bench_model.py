"""Forward+backward time of a PLT preset for R = 1..4, measured side by side in one run.

    python -m bench.bench_model [--preset plt_tiny] [--batch 4] [--seq 256] [--repeats 10]

Each round times every loop count once, in turn, so that drift of the machine hits all of them
alike; the median over rounds is reported with its ratio to R=1. PLT's training cost is R passes
of the block plus the embedding and head once, so the ratio should approach R from below.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from omegaconf import OmegaConf

from model import ModelConfig, PLTModel
from pretrain.distributed import single_process_world


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="plt_tiny")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--loops", default="1,2,3,4")
    args = parser.parse_args()
    single_process_world()

    preset = OmegaConf.merge(OmegaConf.structured(ModelConfig),
                             OmegaConf.load(f"conf/model/{args.preset}.yaml"))
    loop_counts = [int(r) for r in args.loops.split(",")]
    models = {}
    for loops in loop_counts:
        torch.manual_seed(0)
        cfg = OmegaConf.to_object(OmegaConf.merge(preset, {"num_loops": loops}))
        models[loops] = PLTModel(cfg.build())
    tokens = torch.randint(0, preset.vocab_size, (args.batch, args.seq))

    def step(m):
        m.zero_grad(set_to_none=True)
        m(tokens, labels=tokens).mean().backward()

    for m in models.values():  # warm-up
        step(m)
    times = {loops: [] for loops in loop_counts}
    for _ in range(args.repeats):
        for loops, m in models.items():
            start = time.perf_counter()
            step(m)
            times[loops].append(time.perf_counter() - start)

    params = sum(p.numel() for p in models[loop_counts[0]].parameters())
    print(f"{args.preset}: {params / 1e6:.2f}M parameters, batch {args.batch} x seq {args.seq}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats} rounds")
    base = statistics.median(times[loop_counts[0]])
    print(f"{'R':>3} {'fwd+bwd ms':>11} {'ratio to R=' + str(loop_counts[0]):>14} {'tokens/s':>10}")
    for loops in loop_counts:
        median = statistics.median(times[loops])
        tokens_per_s = args.batch * args.seq / median
        print(f"{loops:>3} {median * 1e3:>11.1f} {median / base:>14.2f} {tokens_per_s:>10.0f}")


if __name__ == "__main__":
    main()
