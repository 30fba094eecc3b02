"""Import a Hugging Face directory of either published LoopCoder family (LoopCoder-V2
`iquestpltcoder`, IQuest-Coder-V1 Loop `iquestloopcoder`) or a Llama (`llama`, what an R=1 model
exports as) as a weights-only loopcoder checkpoint.

    python -m scripts.import_hf --hf HF_DIR --out CKPT_DIR
    python -m scripts.import_hf --hf LLAMA_DIR --out CKPT_DIR model.num_loops=2 [model.KEY=VALUE]

CKPT_DIR (a new or empty folder, never a run's checkpoint folder) gets iter_0000000/ (megatron
format, step 0, the directory's tokenizer.model when it has one) and `latest`. A Llama imports as
an R=1 model, or with loop settings (model.num_loops, model.clp, model.clp_emb_scale,
model.clp_hidden_scale, model.normalize_per_loop, model.shared_kv, model.swa_window,
model.gate_input) as the shared block of that looped model, its loop >= 2 gates at their initial
values (g = 0.5). Continue pretraining from it with `checkpoint.init_from=CKPT_DIR` plus the model
settings it prints (or pass `checkpoint.init_from=HF_DIR` directly: a Llama then takes the run's
loop settings); generate from it with scripts/generate.py. Everything is verified first and
nothing is written on a refusal (the library code is handoff/import_hf.py, handoff/read.py).
"""

from __future__ import annotations

import argparse
import sys


def _import(hf_dir: str, out: str, loops: dict) -> str:
    """import_hf, leaving nothing behind when it fails: the temp folder is removed by import_hf,
    the folders of --out this call created by nothing_left_on_failure, which also names --out on
    a full disk (exit 4)."""
    from pretrain.checkpoint.destination import nothing_left_on_failure
    from handoff.import_hf import import_hf

    with nothing_left_on_failure(out, "--out"):
        return import_hf(hf_dir, out, loops)


def loop_settings(overrides) -> dict:
    """{field: value} of `model.KEY=VALUE` loop settings (values parsed as YAML scalars)."""
    import yaml

    from handoff.llama_block import LOOP_FIELDS
    from model.config import ConfigError

    settings = {}
    for override in overrides:
        key, sep, value = override.partition("=")
        field = key[len("model."):] if key.startswith("model.") else None
        if not sep or field not in LOOP_FIELDS:
            raise ConfigError(f"{override!r}: give loop settings as model.KEY=VALUE with KEY one "
                              f"of {list(LOOP_FIELDS)} (the shapes come from the directory)")
        settings[field] = yaml.safe_load(value)
    return settings


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hf", required=True, help="Hugging Face model directory")
    parser.add_argument("--out", required=True, help="checkpoint dir to write")
    parser.add_argument("loops", nargs="*", help="a Llama's loop settings, e.g. model.num_loops=2")
    args = parser.parse_args(argv)

    from handoff.published_config import LLAMA_FAMILY, family_of
    from handoff.read import read_published_config
    from model.config import ConfigError
    from pretrain.checkpoint.weights import read_model_config

    loops = loop_settings(args.loops)
    if loops and family_of(read_published_config(args.hf)[1]) != LLAMA_FAMILY:
        raise ConfigError(f"{args.hf} is a looped model with loop settings of its own; loop "
                          f"settings ({' '.join(args.loops)}) apply to a Llama directory only: "
                          "drop them")
    folder = _import(args.hf, args.out, loops)

    model_cfg = read_model_config(folder)
    settings = " ".join(f"model.{key}={getattr(model_cfg, key)}" for key in (
        "num_layers", "hidden_size", "num_attention_heads", "num_query_groups", "ffn_hidden_size",
        "vocab_size", "num_loops", "clp", "gate_input", "swa_window", "rotary_base",
        "norm_epsilon", "untie_embeddings_and_output_weights"))
    print(f"wrote {folder}\nits model: {settings}")
    return 0


if __name__ == "__main__":
    from pretrain.errors import run_tool

    sys.exit(run_tool(main))
