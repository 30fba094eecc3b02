"""Export a checkpoint as a Hugging Face directory in the published LoopCoder layout (what
transformers, vLLM and SGLang load; docs/spec.md#published-formats).

    python -m scripts.export_hf --checkpoint CKPT_DIR [--iteration N] --out HF_DIR
        [--dtype bf16|fp32] [--max-shard-size 5GB] [--allow-served-differently]
    python -m scripts.export_hf --config-only model=plt_7b [OVERRIDES] --out HF_DIR

CKPT_DIR: an iter_XXXXXXX/ folder or a checkpoint dir with a `latest` file, of either engine
(megatron at any TP/PP, DeepSpeed ZeRO 1-3). --config-only writes config.json and the code for a
model preset (Hydra overrides as the trainer takes them) without building any weights. Load the
result with AutoModelForCausalLM.from_pretrained(HF_DIR, trust_remote_code=True) and
AutoTokenizer.from_pretrained(HF_DIR); an R=1 model exports as a Llama (LlamaForCausalLM, no
remote code). HF_DIR/README.md states which tools load it (transformers, vLLM, SGLang). A model
that vLLM and SGLang would load but compute differently (clp=false with the hidden gate) is
refused (exit 2) unless --allow-served-differently. The library code is handoff/export.py.
"""

from __future__ import annotations

import argparse
import sys
import time

from scripts.flag_types import checked


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="iter_ folder or checkpoint dir")
    parser.add_argument("--iteration", type=_step, help="export iter_<N> of CKPT_DIR, not latest")
    parser.add_argument("--out", required=True, help="the Hugging Face directory to create")
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"))
    parser.add_argument("--max-shard-size", type=_shard_size, default="5GB",
                        help="largest safetensors file, e.g. 5GB, 500MB or 2GiB")
    parser.add_argument("--config-only", action="store_true",
                        help="config.json and code of a preset (give Hydra overrides), no weights")
    parser.add_argument("overrides", nargs="*", help="with --config-only: e.g. model=plt_7b")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="let a DeepSpeed checkpoint you trust unpickle classes beyond its own")
    parser.add_argument("--allow-served-differently", action="store_true",
                        help="export a model that vLLM/SGLang would load but compute differently "
                             "(clp=false with the hidden gate); its README.md says so")
    args = parser.parse_args(argv)

    from pretrain.checkpoint.destination import clear_stale_staging, nothing_left_on_failure
    from pretrain.checkpoint.lock import one_writer

    started = time.perf_counter()
    # A full disk anywhere (the lock file's write first, on a 100%-full one): exit 4 naming --out,
    # the staging folder already removed (handoff/export.py), the folders of --out made removed.
    with nothing_left_on_failure(args.out, "--out"):
        with one_writer(args.out, "--out"):  # one export per output at a time (lock.py)
            clear_stale_staging(args.out)
            out = _export(parser, args)
    print(f"wrote {out} in {time.perf_counter() - started:.1f} s")
    return 0


# --max-shard-size and --iteration are parsed up front (scripts/flag_types.py): a bad value is
# argparse's error (exit 2 naming the flag), not a ValueError once the checkpoint has been read.
def _shard_size(text: str) -> str:
    from handoff.safetensors_files import parse_size

    return checked(parse_size, lambda size: size >= 1, "a size of at least 1 byte; write it like "
                   "5GB, 500MB or 2GiB", keep_text=True)(text)


_step = checked(int, lambda step: step >= 0, "a step (a whole number >= 0)")


def _export(parser, args) -> str:
    if args.config_only:
        from omegaconf import OmegaConf

        from handoff.export import export_config_only
        from model.config import ModelConfig
        from pretrain.config import compose

        cfg = compose(args.overrides)
        model_cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig),
                                                        cfg.model))
        out = export_config_only(model_cfg, args.out, args.dtype, args.allow_served_differently)
    else:
        if not args.checkpoint or args.overrides:
            parser.error("pass --checkpoint CKPT_DIR (overrides go with --config-only)")
        from handoff.export import export_checkpoint

        out = export_checkpoint(args.checkpoint, args.out, args.dtype, args.max_shard_size,
                                args.iteration, args.allow_pickle, args.allow_served_differently)
    return out


if __name__ == "__main__":
    from pretrain.errors import run_tool

    sys.exit(run_tool(main))
