"""Generate code from a trained checkpoint with PLT's cached cross-loop-parallel decoding.

    python scripts/generate.py --checkpoint runs/x/checkpoints [--prompt "def add(a, b):\n"]
        [--prompt ...] [--max-new-tokens 128] [--temperature 0.8] [--top-p 0.95] [--seed 0]
        [--mode parallel|sequential]

CHECKPOINT is an `iter_XXXXXXX/` folder or a checkpoint dir holding a `latest` file. The model is
rebuilt in one process from the checkpoint's config (pretrain/checkpoint/weights.py), the tokenizer
is the run's own (the checkpoint's copy). Several --prompt arguments decode as one batch of any lengths. `parallel`
runs all loops of a token in one forward (PLT); `sequential` runs them one after another (the
vanilla looped transformer's schedule; the only one for a clp=false or clp_offset=0 model).
Greedy at temperature 0.
Each prompt plus --max-new-tokens must fit the model's max_position_embeddings (refused otherwise:
positions past it were never trained).

In a prompt, the escapes \\n \\t \\r \\\\ \\' \\" \\xHH \\uHHHH \\UHHHHHHHH and \\N{name} stand for their
characters (a shell passes a newline badly); everything else, non-ASCII text included, is kept as is.
"""

from __future__ import annotations

import argparse
import codecs
import re
import sys
import time

import torch

from pretrain.checkpoint import checkpoint_tokenizer, load_model, resolve_checkpoint

ESCAPE = re.compile(r"\\(?:[\\'\"nrt]|x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|N\{[^}]+\})")


def unescape(prompt: str) -> str:
    """Decode the backslash escapes of a prompt and nothing else. (Decoding the whole string with
    "unicode_escape" would first read it as Latin-1 bytes: é became Ã©.)"""
    return ESCAPE.sub(lambda match: codecs.decode(match.group(), "unicode_escape"), prompt)


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
                        "parallel, or sequential for a clp=false or clp_offset=0 model")
    args = parser.parse_args(argv)
    from model.generation import check_positions, check_sampling_flags, generate

    check_sampling_flags(args.temperature, args.top_p, args.max_new_tokens, args.seed)
    prompts = [unescape(p) for p in (args.prompt or ["def fibonacci(n):\\n"])]
    for number, prompt in enumerate(prompts, 1):
        if not prompt:
            parser.error(f"--prompt #{number} is empty; give the code to continue")

    from model.decoding import decode_mode

    folder = resolve_checkpoint(args.checkpoint)
    plt, _, step = load_model(folder)
    try:
        mode = decode_mode(plt.config, args.mode)
    except ValueError as err:
        parser.error(f"--mode {args.mode}: {err}")
    tokenizer = checkpoint_tokenizer(folder)
    ids = [torch.tensor(tokenizer.encode(p)) for p in prompts]  # documents carry no BOS
    check_positions([len(i) for i in ids], args.max_new_tokens, plt.config.max_position_embeddings)
    started = time.perf_counter()
    outputs = generate(plt, ids, args.max_new_tokens, temperature=args.temperature,
                       top_p=args.top_p, mode=mode, eos_id=tokenizer.eod_id,
                       generator=torch.Generator().manual_seed(args.seed))
    seconds = time.perf_counter() - started
    texts = []
    for prompt_ids, out in zip(ids, outputs):
        text = tokenizer.decode([i for i in out.tolist() if i != tokenizer.eod_id])
        texts.append(text)
        print("-" * 60 + "\n" + text)
    new = sum(len(o) - len(i) for o, i in zip(outputs, ids))
    print("-" * 60 + f"\n{folder} (step {step}, R={plt.config.num_loops}): {new} tokens in "
          f"{seconds:.2f} s, {mode} decoding")
    return texts


if __name__ == "__main__":
    from pretrain.errors import run_tool

    sys.exit(run_tool(main))
