"""Import a Hugging Face directory of either published LoopCoder family (LoopCoder-V2
`iquestpltcoder`, IQuest-Coder-V1 Loop `iquestloopcoder`) as a weights-only loopcoder checkpoint.

    python -m scripts.import_hf --hf HF_DIR --out CKPT_DIR

CKPT_DIR (a new or empty folder, never a run's checkpoint folder) gets iter_0000000/ (megatron
format, step 0, the directory's tokenizer.model when it has one) and `latest`. Continue pretraining from it with `checkpoint.init_from=CKPT_DIR` plus the
model settings it prints (or pass `checkpoint.init_from=HF_DIR` directly); generate from it with
scripts/generate.py. Everything is verified first and nothing is written on a refusal (the library
code is handoff/read.py).
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hf", required=True, help="Hugging Face model directory")
    parser.add_argument("--out", required=True, help="checkpoint dir to write")
    args = parser.parse_args(argv)

    from pretrain.checkpoint.init import import_hf
    from pretrain.checkpoint.weights import read_model_config

    folder = import_hf(args.hf, args.out)

    model_cfg = read_model_config(folder)
    settings = " ".join(f"model.{key}={getattr(model_cfg, key)}" for key in (
        "num_layers", "hidden_size", "num_attention_heads", "num_query_groups", "ffn_hidden_size",
        "vocab_size", "num_loops", "clp", "gate_input", "swa_window"))
    print(f"wrote {folder}\nits model: {settings}")
    return 0


if __name__ == "__main__":
    from pretrain.errors import run_tool

    sys.exit(run_tool(main))
