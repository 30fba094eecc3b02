"""Training throughput of the default job for R=1 vs R=2 (or any loop counts), side by side in one run.

    python -m bench.bench_train [--loops 1,2] [--steps 10] [OVERRIDES]   # e.g. train.seq_length=256

Builds the trainer's own engine (megatron DDP, optimizer, LR schedule, forward-backward function)
once per loop count from the composed run config (conf/config.yaml plus the overrides), on the real
data of the default job, then times full optimizer steps in rounds: each round runs one step of every
loop count in turn, so drift of the machine (other processes on a shared box) hits all alike. Prints
the median tokens/s per R, the model FLOPs (model/flops.py), and the ratios to the first R.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

for _message in (".*Transformer Engine and Apex.*", "Apex is not installed.*", "full scope is depr.*"):
    warnings.filterwarnings("ignore", message=_message)

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from pretrain.config import compose, validate  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loops", default="1,2")
    parser.add_argument("--steps", type=int, default=10, help="timed rounds (after 2 warm-up)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    from data.loader import build_loader
    from data.prepare import prepare_data
    from pretrain.distributed import init_distributed, shutdown_distributed
    from model.flops import flops_per_token, peak_flops_per_device
    from pretrain.engines.megatron import MegatronEngine

    base = compose(["run_dir=/tmp/unused", *args.overrides])
    loop_counts = [int(r) for r in args.loops.split(",")]
    configs = {r: OmegaConf.to_object(OmegaConf.merge(base, {"model": {"num_loops": r}}))
               for r in loop_counts}
    first = configs[loop_counts[0]]
    layouts = {r: validate(cfg, world_size=1) for r, cfg in configs.items()}
    world = init_distributed(layouts[loop_counts[0]], first.train.seed, first.parallel.backend)
    train = first.train
    prepared = prepare_data(first.data, train.seq_length)
    loader = build_loader(first.data, prepared, "train", train.seq_length, train.global_batch_size,
                          train.micro_batch_size, 0, 1, train.seed)
    engines = {}
    for r, cfg in configs.items():
        torch.manual_seed(train.seed)
        engines[r] = MegatronEngine(cfg, world.device, layouts[r])

    batches = [next(loader) for _ in range(args.steps + 2)]
    times = {r: [] for r in loop_counts}
    for i, batch in enumerate(batches):
        for r, engine in engines.items():
            start = time.perf_counter()
            engine.train_step(batch)
            if i >= 2:
                times[r].append(time.perf_counter() - start)

    tokens = train.global_batch_size * train.seq_length
    peak = peak_flops_per_device(train.peak_tflops)
    params = sum(p.numel() for p in engines[loop_counts[0]].inference_model.parameters())
    print(f"{first.model.name}: {params / 1e6:.2f}M parameters, global batch "
          f"{train.global_batch_size} x seq {train.seq_length} (micro {train.micro_batch_size}), "
          f"{torch.get_num_threads()} threads, "
          f"{world.device}, median of {args.steps} rounds")
    print(f"{'R':>3} {'s/step':>8} {'tokens/s':>10} {'GFLOP/token':>12} {'MFU':>6} "
          f"{'time vs R=' + str(loop_counts[0]):>13} {'tokens/s vs R=' + str(loop_counts[0]):>17}")
    base_time = statistics.median(times[loop_counts[0]])
    for r in loop_counts:
        median = statistics.median(times[r])
        flops = flops_per_token(configs[r].model, train.seq_length)
        print(f"{r:>3} {median:>8.3f} {tokens / median:>10.0f} {flops / 1e9:>12.4f} "
              f"{tokens / median * flops / peak:>6.1%} {median / base_time:>13.2f} "
              f"{base_time / median:>17.2f}")
    shutdown_distributed()


if __name__ == "__main__":
    main()
