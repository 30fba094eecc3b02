"""The Hugging Face hand-off, measured in one run: export time and peak memory, and decoding speed
of the exported model in transformers against our own decoder, side by side.

    python bench/bench_handoff.py [--presets plt_125m,plt_1b] [--new-tokens 64] [--threads 1]

1. Export: a checkpoint of the preset (random weights, fp32, megatron format, written here) goes
   through `python -m scripts.export_hf --dtype bf16` in a child process; its wall time and peak
   RSS (the child's ru_maxrss from wait4) are printed next to the model's fp32 size. The export
   streams, so the peak should stay near one fp32 copy plus a shard (plus Python and torch).
2. Decoding: the same prompt, greedy, `--new-tokens` tokens, on the CPU with `--threads` threads:
   transformers `generate()` on the exported directory (our hf_files implementation, its PLT
   cache) vs model/generation.py (what scripts/generate.py runs), tokens/s each and the ratio,
   and whether the tokens agree.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def preset(name):
    from omegaconf import OmegaConf

    from model import ModelConfig

    merged = OmegaConf.merge(OmegaConf.structured(ModelConfig),
                             OmegaConf.load(os.path.join(REPO, "conf", "model", f"{name}.yaml")))
    cfg = OmegaConf.to_object(merged)
    cfg.attention_backend, cfg.recompute = "torch", "none"
    return cfg


def write_checkpoint(model_cfg, root, tokenizer_model):
    """A random-weight checkpoint of `model_cfg` as the trainer's Checkpointer writes it (weights only)."""
    from omegaconf import OmegaConf

    from model import PLTModel
    from pretrain.checkpoint import files
    from pretrain.checkpoint.weights import staged_checkpoint, write_weights_only

    model = PLTModel(model_cfg.build())
    weights = {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
    del model
    fields = dataclasses.asdict(model_cfg)
    with staged_checkpoint(root, 1) as tmp:
        write_weights_only(tmp, weights, model_cfg, {"step": 1, "model": fields}, "megatron",
                           config_yaml=OmegaConf.to_yaml({"model": fields}))
        shutil.copyfile(tokenizer_model, os.path.join(tmp, files.TOKENIZER_FILE))
    return sum(t.numel() for t in weights.values())


def timed_export(checkpoint, out, threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "scripts.export_hf", "--checkpoint", checkpoint,
                              "--out", out, "--dtype", "bf16"], cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    if status != 0:
        raise RuntimeError(f"export failed: {child.stderr.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss * 1024  # Linux reports KiB


def decode_speeds(checkpoint, hf_dir, new_tokens):
    import torch
    import transformers

    from model.generation import generate
    from pretrain.checkpoint import checkpoint_tokenizer, load_model, resolve_checkpoint

    folder = resolve_checkpoint(checkpoint)
    ours, _, _ = load_model(folder)
    prompt = torch.tensor(checkpoint_tokenizer(folder).encode("def fibonacci(n):\n    "))
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, trust_remote_code=True,
                                                           dtype=torch.float32).eval()
    results = {}
    with torch.no_grad():
        generate(ours, [prompt], 2)  # warm-up, both
        hf.generate(prompt[None], max_new_tokens=2, do_sample=False, eos_token_id=None)
        started = time.perf_counter()
        ours_tokens = generate(ours, [prompt], new_tokens)[0][len(prompt):]
        results["ours"] = new_tokens / (time.perf_counter() - started)
        started = time.perf_counter()
        hf_tokens = hf.generate(prompt[None], max_new_tokens=new_tokens, do_sample=False,
                                eos_token_id=None, pad_token_id=0)[0][len(prompt):]
        results["transformers"] = new_tokens / (time.perf_counter() - started)
    # bf16 export read back as fp32 vs the fp32 checkpoint: tokens may part after a while.
    same = int((ours_tokens == hf_tokens).cumprod(0).sum())
    return results, same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="plt_125m")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    from data.prepare import prepare_data
    from data.config import DataConfig
    from pretrain.distributed import single_process_world

    torch.set_num_threads(args.threads)
    single_process_world()
    tokenizer_model = prepare_data(DataConfig(), 128).tokenizer_model  # the default stdlib one
    print(f"{'preset':10} {'params':>8} {'fp32 GB':>8} {'export s':>9} {'peak RSS GB':>12} "
          f"{'RSS/fp32':>9} {'ours tok/s':>11} {'HF tok/s':>9} {'HF/ours':>8} {'same':>5}")
    for name in args.presets.split(","):
        work = tempfile.mkdtemp(prefix=f"bench-handoff-{name}-")
        try:
            cfg = preset(name)
            params = write_checkpoint(cfg, os.path.join(work, "ckpt"), tokenizer_model)
            seconds, peak = timed_export(os.path.join(work, "ckpt"), os.path.join(work, "hf"),
                                         args.threads)
            speeds, same = decode_speeds(os.path.join(work, "ckpt"), os.path.join(work, "hf"),
                                         args.new_tokens)
            fp32 = params * 4
            print(f"{name:10} {params / 1e6:7.0f}M {fp32 / 1e9:8.2f} {seconds:9.1f} "
                  f"{peak / 1e9:12.2f} {peak / fp32:9.2f} {speeds['ours']:11.1f} "
                  f"{speeds['transformers']:9.1f} {speeds['transformers'] / speeds['ours']:8.2f} "
                  f"{same:>2}/{args.new_tokens}", flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
