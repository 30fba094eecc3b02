"""Generate code from a trained checkpoint with PLT's cached cross-loop-parallel decoding.

    python scripts/generate.py --checkpoint runs/x/checkpoints [--prompt "def add(a, b):\n"]
        [--prompt ...] [--max-new-tokens 128] [--temperature 0.8] [--top-p 0.95] [--seed 0]
        [--mode parallel|sequential]

CHECKPOINT is an `iter_XXXXXXX/` folder or a checkpoint dir holding a `latest` file. The model is
rebuilt in one process from the checkpoint's config (pretrain/checkpoint/weights.py), the tokenizer
is the run's own (the checkpoint's copy). Several --prompt arguments decode as one batch of any lengths. `parallel`
runs all loops of a token in one forward (PLT); `sequential` runs them one after another (the
vanilla looped transformer's schedule; the only one for a clp=false model). Greedy at temperature 0.
"""

from __future__ import annotations

import argparse
import time

import torch

from pretrain.checkpoint import checkpoint_tokenizer, load_model, resolve_checkpoint


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--prompt", action="append", help="repeat for a batch (default: a def)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mode", choices=("parallel", "sequential"), default=None,
                        help="loops decoded in one forward (PLT) or one after another; default: "
                        "parallel, or sequential for a clp=false model")
    args = parser.parse_args(argv)

    from model.generation import generate

    folder = resolve_checkpoint(args.checkpoint)
    plt, _, step = load_model(folder)
    tokenizer = checkpoint_tokenizer(folder)
    prompts = [p.encode().decode("unicode_escape") for p in (args.prompt or ["def fibonacci(n):\\n"])]
    ids = [torch.tensor(tokenizer.encode(p)) for p in prompts]  # documents carry no BOS
    started = time.perf_counter()
    outputs = generate(plt, ids, args.max_new_tokens, temperature=args.temperature,
                       top_p=args.top_p, mode=args.mode, eos_id=tokenizer.eod_id,
                       generator=torch.Generator().manual_seed(args.seed))
    seconds = time.perf_counter() - started
    texts = []
    for prompt_ids, out in zip(ids, outputs):
        text = tokenizer.decode([i for i in out.tolist() if i != tokenizer.eod_id])
        texts.append(text)
        print("-" * 60 + "\n" + text)
    new = sum(len(o) - len(i) for o, i in zip(outputs, ids))
    print("-" * 60 + f"\n{folder} (step {step}, R={plt.config.num_loops}): {new} tokens in "
          f"{seconds:.2f} s, {args.mode} decoding")
    return texts


if __name__ == "__main__":
    main()
