"""Loop diagnostics of a saved checkpoint (docs/spec.md#loop-diagnostics).

    python scripts/diagnose.py CHECKPOINT [--batch 4] [--seq-length 512] [--random-tokens] [--out rows.jsonl]

CHECKPOINT is an `iter_XXXXXXX/` folder or a checkpoint dir holding a `latest` file. The model is
rebuilt from the checkpoint's own config.yaml in one process (tensor parallel 1, fp32; dist
checkpointing reshards whatever layout it was saved with), only the model weights are loaded, and the
held-out batch is global batch 0 of the run's validation split (data/loader.py `held_out_batch`), the
batch the trainer's periodic diagnostics use. `--random-tokens` skips the data (a quick look at an
untrained or data-less checkpoint). Prints one line per loop; `--out` also writes metrics.jsonl rows.
"""

from __future__ import annotations

import argparse
import sys

import torch
from omegaconf import OmegaConf

from model.config import ConfigError
from model.diagnostics import METRICS, compute_loop_diagnostics, flatten_for_metrics
from pretrain.checkpoint import load_model, resolve_checkpoint


def held_out_tokens(config, batch: int, seq_length: int) -> torch.Tensor:
    """The first `batch` sequences of the validation split's global batch 0, as the trainer sees it."""
    from data.config import DataConfig
    from data.loader import build_loader
    from data.prepare import prepare_data

    data_cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DataConfig), config.data))
    prepared = prepare_data(data_cfg, seq_length)
    loader = build_loader(data_cfg, prepared, "valid", seq_length, batch, batch, 0, 1,
                          int(config.train.seed))
    return loader.held_out_batch()[0]["tokens"]


def format_table(rows: list) -> str:
    names = [name for name in METRICS if any(row.get(name) is not None for row in rows)]
    lines = ["loop " + " ".join(f"{name:>16.16}" for name in names)]
    for row in rows:
        cells = [f"{row[n]:16.4f}" if row.get(n) is not None else f"{'-':>16}" for n in names]
        lines.append(f"{row['loop']:>4} " + " ".join(cells))
    return "\n".join(lines)


MAX_BATCH = 1024  # sequences: the loop metrics are means, more only costs minutes
DEFAULT_ATTENTION_QUERIES = 64


def _check_flags(args) -> None:
    """Each numeric flag in its valid range before the checkpoint is read (exit 2 naming it)."""
    from model.generation import MAX_SEED

    rules = [("--batch", args.batch, 1 <= args.batch <= MAX_BATCH, f"in 1..{MAX_BATCH}"),
             ("--seq-length", args.seq_length, args.seq_length is None or args.seq_length >= 2,
              "at least 2 (or leave it out: the run's train.seq_length)"),
             ("--attention-queries", args.attention_queries,
              args.attention_queries is None or args.attention_queries >= 0,
              "0 (no attention metrics) or more"),
             ("--seed", args.seed, 0 <= args.seed <= MAX_SEED, f"in 0..{MAX_SEED}")]
    for flag, value, ok, rule in rules:
        if not ok:
            raise ConfigError(f"{flag} {value}: it must be {rule}")


def _check_fits_model(args, seq_length: int, max_positions: int) -> None:
    """The sequence must fit the model's positions (past them nothing was trained, and a huge
    --seq-length ran for minutes); the attention queries are positions of that sequence."""
    flag = "--seq-length" if args.seq_length else "the run's train.seq_length (--seq-length)"
    if seq_length > max_positions:
        raise ConfigError(f"{flag} {seq_length}: it is past the model's max_position_embeddings="
                          f"{max_positions}; pass --seq-length {max_positions} or less")
    if args.attention_queries is None:  # the default: as many of 64 as the sequence has
        args.attention_queries = min(DEFAULT_ATTENTION_QUERIES, seq_length)
    if args.attention_queries > seq_length:
        raise ConfigError(f"--attention-queries {args.attention_queries}: it must be at most the "
                          f"sequence length {seq_length} (they are positions of it), or 0")


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="an iter_XXXXXXX folder or a dir with a `latest` file")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-length", type=int, default=None, help="default: train.seq_length")
    parser.add_argument("--attention-queries", type=int, default=None,
                        help="query positions for the attention metrics (default: 64, or the "
                             "sequence length when shorter); 0 skips them")
    parser.add_argument("--random-tokens", action="store_true", help="uniform random ids, no data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="also write the rows here as JSON lines")
    args = parser.parse_args(argv)
    _check_flags(args)

    folder = resolve_checkpoint(args.checkpoint)
    if args.out:  # a file written into a checkpoint folder breaks its checksums, or replaces `latest`
        from pretrain.checkpoint.destination import refuse_overlap

        refuse_overlap({"CHECKPOINT": args.checkpoint, "its checkpoint": folder}, args.out, "--out")
    plt, config, step = load_model(folder)
    seq_length = args.seq_length or int(config.train.seq_length)
    _check_fits_model(args, seq_length, plt.config.max_position_embeddings)
    if args.random_tokens:
        generator = torch.Generator().manual_seed(args.seed)
        tokens = torch.randint(0, plt.vocab_size, (args.batch, seq_length), generator=generator)
    else:
        tokens = held_out_tokens(config, args.batch, seq_length)
    rows = compute_loop_diagnostics(plt, tokens, attention_queries=args.attention_queries)
    print(f"{folder}: step {step}, R={plt.config.num_loops}, clp={plt.config.clp}, "
          f"clp_offset={plt.config.clp_offset}, {tokens.shape[0]} x {tokens.shape[1]} tokens")
    print(format_table(rows))
    if args.out:
        from pretrain.run_files import json_line, write_file_atomically

        # metrics.jsonl's format (null for a value that is not finite), replaced atomically.
        write_file_atomically(args.out, "".join(json_line(row)
                                                for row in flatten_for_metrics(rows, step)))
    return rows


if __name__ == "__main__":
    from pretrain.errors import run_tool

    sys.exit(run_tool(main))
