"""Per-token decode latency and KV-cache size of PLT against R=1 and the vanilla looped mode.

    python -m bench.decode [--presets plt_tiny,plt_125m] [--batches 1,8] [--prompt 512] [--new 256]

For each preset and batch size, one run measures side by side:
- R=1 (plain GPT), and R=2, R=3 decoded two ways: ``parallel`` (PLT: all loops of a token in one
  forward of R*b rows) and ``sequential`` (the vanilla looped transformer's schedule: R forwards of
  b rows per token);
- the cache bytes of PLT (loop-1 cache + 65-token rings) and of a vanilla looped transformer
  (shared_kv=false: a full cache per loop), each over R=1's.
Weights are random (latency and memory do not depend on them); greedy decoding of ``--new``
tokens after a ``--prompt``-token prompt; the prefill is not timed.
"""

from __future__ import annotations

import argparse
import time

import torch
from omegaconf import OmegaConf

from model import ModelConfig, PLTModel
from model.decoding import DecodeCache, LoopDecoder
from model.generation import choose_next_token
from pretrain.distributed import single_process_world


def build(preset: str, device: str = "cpu", **overrides) -> PLTModel:
    """A preset with random weights, in eval mode: fp32 on CPU, bf16 initialised on a GPU."""
    cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig),
                          OmegaConf.load(f"conf/model/{preset}.yaml"), overrides)
    torch.manual_seed(0)
    on_gpu = torch.device(device).type == "cuda"
    built = OmegaConf.to_object(cfg).build(
        params_dtype=torch.bfloat16 if on_gpu else torch.float32, use_cpu_initialization=not on_gpu)
    return PLTModel(built).to(device).eval()


def per_token_seconds(model, prompts, new_tokens: int, mode: str) -> float:
    decoder = LoopDecoder(model, len(prompts), prompts.shape[1] + new_tokens + 1, mode)
    logits = decoder.prefill(list(prompts))
    on_gpu = prompts.device.type == "cuda"
    if on_gpu:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(new_tokens):
        logits = decoder.step(choose_next_token(logits))
    if on_gpu:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / new_tokens


def latency_rows(make_model, batches, prompt: int, new_tokens: int, device="cpu") -> list:
    """Per-token latency of R=1, R=2 parallel (PLT: both loops of a token in one forward) and R=2
    sequential (two forwards), per batch size; ``make_model(num_loops)`` builds the model. A first
    short decode warms each model up (kernels, allocator) before the timed one."""
    rows = []
    for loops in (1, 2):
        model = make_model(loops)
        vocab = model.config.vocab_size
        for batch in batches:
            prompts = torch.randint(0, vocab, (batch, prompt),
                                    generator=torch.Generator().manual_seed(0)).to(device)
            for mode in ("parallel",) if loops == 1 else ("parallel", "sequential"):
                per_token_seconds(model, prompts, 2, mode)
                seconds = per_token_seconds(model, prompts, new_tokens, mode)
                rows.append(dict(loops=loops, mode=mode if loops > 1 else "-", batch=batch,
                                 ms_per_token=seconds * 1e3))
        del model
    for row in rows:
        base = next(r for r in rows if r["loops"] == 1 and r["batch"] == row["batch"])
        row["vs_r1"] = row["ms_per_token"] / base["ms_per_token"]
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="plt_tiny,plt_125m")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--new", type=int, default=256)
    args = parser.parse_args()
    single_process_world()
    print(f"{torch.get_num_threads()} threads; prompt {args.prompt}, {args.new} new tokens; "
          "latency = mean per-token decode step")
    print(f"{'preset':>9} {'batch':>5} {'R':>2} {'mode':>10} {'ms/token':>9} {'vs R=1':>7} "
          f"{'PLT cache':>10} {'vs R=1':>7} {'vanilla cache':>13} {'vs R=1':>7}")
    for preset in args.presets.split(","):
        models = {loops: build(preset, num_loops=loops) for loops in (1, 2, 3)}
        vocab = models[1].config.vocab_size
        for batch in (int(b) for b in args.batches.split(",")):
            prompts = torch.randint(0, vocab, (batch, args.prompt),
                                    generator=torch.Generator().manual_seed(0))
            length = args.prompt + args.new + 1
            base_time = per_token_seconds(models[1], prompts, args.new, "parallel")
            base_bytes = DecodeCache(models[1], batch, length).nbytes()
            print(f"{preset:>9} {batch:>5} {1:>2} {'-':>10} {base_time * 1e3:>9.2f} {1.0:>7.2f} "
                  f"{base_bytes / 2**20:>8.1f}MB {1.0:>7.3f} {base_bytes / 2**20:>11.1f}MB "
                  f"{1.0:>7.2f}")
            for loops in (2, 3):
                plt_bytes = DecodeCache(models[loops], batch, length).nbytes()
                vanilla = build(preset, num_loops=loops, shared_kv=False)
                vanilla_bytes = DecodeCache(vanilla, batch, length).nbytes()
                for mode in ("parallel", "sequential"):
                    seconds = per_token_seconds(models[loops], prompts, args.new, mode)
                    print(f"{preset:>9} {batch:>5} {loops:>2} {mode:>10} {seconds * 1e3:>9.2f} "
                          f"{seconds / base_time:>7.2f} {plt_bytes / 2**20:>8.1f}MB "
                          f"{plt_bytes / base_bytes:>7.3f} {vanilla_bytes / 2**20:>11.1f}MB "
                          f"{vanilla_bytes / base_bytes:>7.2f}")


if __name__ == "__main__":
    main()
