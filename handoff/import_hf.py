"""A Hugging Face directory as a loopcoder checkpoint: what `python -m scripts.import_hf` writes,
and what the trainer stages an HF directory given as `checkpoint.init_from` into
(pretrain/checkpoint/init.py; pretrain/train.py hands it `import_for_run`).

    import_hf(hf_dir, checkpoint_dir, loops)            # iter_0000000/ + latest, megatron format
    import_for_run(hf_dir, checkpoint_dir, model_fields)  # the same, a Llama under the run's loops
"""

from __future__ import annotations

import dataclasses
import os
import shutil

from handoff.llama_block import LOOP_FIELDS
from handoff.read import read_hf


def import_hf(hf_dir: str, checkpoint_dir: str, loops=None) -> str:
    """A weights-only megatron checkpoint of `hf_dir` at step 0 in `checkpoint_dir` (iter_0000000
    + `latest`, sealed), with the directory's tokenizer.model when it has one: what
    `python -m scripts.import_hf` writes. Nothing is written when `hf_dir` fails verification
    (handoff.read_hf), overlaps `checkpoint_dir`, or `checkpoint_dir` holds anything
    (pretrain/checkpoint/destination.py). `loops`: the loop settings a Llama directory (no loops of
    its own) is imported under, as the block of that looped model. Returns the iter_ folder."""
    from omegaconf import OmegaConf

    from pretrain.checkpoint import files
    from pretrain.checkpoint.destination import new_checkpoint_dir, refuse_overlap, refuse_used
    from pretrain.checkpoint.weights import staged_checkpoint, write_weights_only

    refuse_overlap({"--hf": hf_dir}, checkpoint_dir, "--out")
    refuse_used(checkpoint_dir, "--out")  # again under the lock below; first before the read
    model_cfg, weights = read_hf(hf_dir, loops)
    with new_checkpoint_dir(checkpoint_dir, "--out"), staged_checkpoint(checkpoint_dir, 0) as tmp:
        fields = dataclasses.asdict(model_cfg)
        state = {"step": 0, "consumed_samples": 0, "model": fields, "world_size": 1,
                 "imported_from": os.path.abspath(hf_dir)}
        write_weights_only(tmp, weights, model_cfg, state, "megatron",
                           config_yaml=OmegaConf.to_yaml({"model": fields}))
        tokenizer = os.path.join(hf_dir, "tokenizer.model")
        if os.path.isfile(tokenizer):
            shutil.copyfile(tokenizer, os.path.join(tmp, files.TOKENIZER_FILE))
    return os.path.join(checkpoint_dir, files.iter_name(0))


def import_for_run(hf_dir: str, checkpoint_dir: str, model_fields: dict) -> str:
    """import_hf for `checkpoint.init_from`: a Llama directory becomes the run's model, its block
    under the run's loop settings (`model_fields`: the run's model config as a dict)."""
    loops = {key: model_fields[key] for key in LOOP_FIELDS if key in model_fields}
    return import_hf(hf_dir, checkpoint_dir, loops)
