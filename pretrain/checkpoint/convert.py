"""Move a run between engines: a checkpoint's model weights from one engine's format into the other's.

    convert_checkpoint(SRC, DST_CHECKPOINT_DIR)     # direction from SRC's loopcoder.json
    python -m scripts.convert_checkpoint SRC DST    # the same, as a command

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

import pretrain.checkpoint.files as files
from pretrain.checkpoint.resume import resolve_checkpoint
from pretrain.checkpoint.weights import publish_checkpoint, read_weights, write_weights_only


def checkpoint_engine(path: str) -> str:
    from pretrain.checkpoint.state import read_trainer_state
    return read_trainer_state(path).get("engine", "megatron")


def convert_checkpoint(src: str, dst_root: str, allow_pickle: bool = False) -> str:
    """Convert the iter_ folder `src` (or the `latest` of a checkpoint dir) into the other engine's
    format under `dst_root`; returns the new iter_ folder."""
    src = resolve_checkpoint(src)
    model_cfg, weights, state = read_weights(src, allow_pickle=allow_pickle)
    target = "megatron" if state.get("engine", "megatron") == "deepspeed" else "deepspeed"
    name = files.iter_name(state["step"])
    tmp = os.path.join(dst_root, files.tmp_name(state["step"]))
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    with open(os.path.join(src, files.CONFIG_FILE)) as stream:
        config_yaml = stream.read()
    write_weights_only(tmp, weights, model_cfg, dict(state, converted_from=src), target, config_yaml)
    if os.path.isdir(os.path.join(src, files.RNG_DIR)):
        shutil.copytree(os.path.join(src, files.RNG_DIR), os.path.join(tmp, files.RNG_DIR))
    if os.path.isfile(os.path.join(src, files.TOKENIZER_FILE)):
        shutil.copy(os.path.join(src, files.TOKENIZER_FILE), os.path.join(tmp, files.TOKENIZER_FILE))
    return publish_checkpoint(dst_root, name, tmp)
