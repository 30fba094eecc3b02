"""Move a run between engines: a checkpoint's model weights from one engine's format into the other's.

    convert_checkpoint(SRC, DST_CHECKPOINT_DIR, target="megatron")   # into that engine's format
    python -m scripts.convert_checkpoint SRC DST --to megatron          # the same, as a command

SRC is an iter_ folder or a checkpoint dir with a `latest` file. The output is `DST/iter_XXXXXXX/`
+ `DST/latest`, so `checkpoint.dir=DST` (or `checkpoint.resume=DST`) continues the run under the
other engine. It holds the weights (fp32, bit for bit the source's: under ZeRO the fp32 master
partitions, not a bf16 copy), the trainer state (step, consumed samples, LR schedule, data
position), the per-rank RNG files and config.yaml, and is marked `"weights_only": true`: the Adam
moments start from zero after the move (the optimizers' partitioned layouts differ between ZeRO and
megatron), which the first steps' losses show as a small bump.

- deepspeed -> megatron: megatron-core dist_checkpointing (torch_dist), model only.
- megatron -> deepspeed: `mp_rank_00_model_states.pt` with {"module": state_dict}, the file
  DeepSpeed's loader reads for the weights.
Conversion runs in one process (a world of one, TP=PP=1) and never needs DeepSpeed for megatron ->
deepspeed; deepspeed -> megatron uses DeepSpeed's zero_to_fp32 to merge ZeRO partitions.
"""

from __future__ import annotations

import os
import shutil
from typing import Optional

import pretrain.checkpoint.files as files
from model.config import ConfigError
from pretrain.checkpoint.destination import new_checkpoint_dir, refuse_overlap, refuse_used
from pretrain.checkpoint.resume import resolve_checkpoint
from pretrain.checkpoint.weights import read_weights, staged_checkpoint, write_weights_only
from pretrain.engines import ENGINE_NAMES, engine_of


def checkpoint_engine(path: str) -> str:
    from pretrain.checkpoint.state import read_trainer_state

    return engine_of(read_trainer_state(path))


def target_engine(source: str, target: Optional[str], flag: str = "--to") -> str:
    """The engine to convert a checkpoint of `source`'s into: `target`, or when none is given the
    one other engine there is (what the command did before it took --to). ConfigError naming
    `flag` for an unknown engine, the source's own, or no single other."""
    others = [name for name in ENGINE_NAMES if name != source]
    if target is None:
        if len(others) != 1:
            raise ConfigError(f"the checkpoint was written by engine={source}; name the engine to "
                              f"convert it into with {flag} ({' or '.join(others)})")
        return others[0]
    if target not in ENGINE_NAMES:
        raise ConfigError(f"{flag} {target}: not an engine; use {' or '.join(ENGINE_NAMES)}")
    if target == source:
        raise ConfigError(f"{flag} {target}: the checkpoint was written by engine={source} "
                          f"already; resume it as it is, or pass {flag} "
                          f"{' or '.join(others)}")
    return target


def convert_checkpoint(src: str, dst_root: str, allow_pickle: bool = False,
                       target: Optional[str] = None) -> str:
    """Convert the iter_ folder `src` (or the `latest` of a checkpoint dir) into the format of the
    engine `target` (pretrain/checkpoint/convert.py target_engine: None is the other engine) under
    `dst_root` (absent or empty: pretrain/checkpoint/destination.py); returns the new iter_
    folder. Nothing is written unless `src` is whole, apart from `dst_root` and not already of
    engine `target`."""
    given, src = src, resolve_checkpoint(src)
    refuse_overlap({"SRC": given, "its checkpoint": src}, dst_root, "DST")
    refuse_used(dst_root, "DST")  # again under the lock below; first before the (long) read
    model_cfg, weights, state = read_weights(src, allow_pickle=allow_pickle)  # verified first
    target = target_engine(engine_of(state), target)
    with new_checkpoint_dir(dst_root, "DST"):
        with staged_checkpoint(dst_root, state["step"]) as tmp:
            with open(os.path.join(src, files.CONFIG_FILE)) as stream:
                config_yaml = stream.read()
            write_weights_only(tmp, weights, model_cfg, dict(state, converted_from=src), target,
                               config_yaml=config_yaml)
            if os.path.isdir(os.path.join(src, files.RNG_DIR)):
                shutil.copytree(os.path.join(src, files.RNG_DIR), os.path.join(tmp, files.RNG_DIR))
            if os.path.isfile(os.path.join(src, files.TOKENIZER_FILE)):
                shutil.copy(os.path.join(src, files.TOKENIZER_FILE),
                            os.path.join(tmp, files.TOKENIZER_FILE))
    return os.path.join(dst_root, files.iter_name(state["step"]))
