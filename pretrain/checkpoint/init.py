"""`checkpoint.init_from`: start a run from another model's weights (continued pretraining,
annealing), at step 0 with a fresh optimizer, LR schedule and data order.

The source is a Hugging Face directory in a published LoopCoder layout (handoff/: read, verified,
never unpickled) or a loopcoder checkpoint of either engine and any layout (an iter_ folder or a
checkpoint dir with `latest`). Whatever the source, rank 0 stages it as a weights-only checkpoint of
this run's engine under `<checkpoint.dir>/.init_from/` (an HF directory through import_hf below,
the other engine's checkpoint through the engine conversion); then every rank loads the model part
from it as from any checkpoint (resharding to this run's TP/PP layout, checksums verified, model
fields compared), and the staging folder is removed. A run that already has a checkpoint of its own
in checkpoint.dir resumes from it instead: init_from only starts a run.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil

import pretrain.checkpoint.files as files
from pretrain.checkpoint.destination import new_checkpoint_dir, refuse_overlap, refuse_used
from pretrain.collective import collectively, on_main
from pretrain.checkpoint.resume import check_model_fields, resolve_checkpoint, verify_complete
from pretrain.checkpoint.weights import publish_checkpoint, write_weights_only
from pretrain.distributed import barrier, is_main
from pretrain.errors import CheckpointError

logger = logging.getLogger(__name__)
STAGING_DIR = ".init_from"


def is_hf_dir(path: str) -> bool:
    return (os.path.isfile(os.path.join(path, "config.json"))
            and not os.path.isfile(os.path.join(path, "loopcoder.json"))
            and not os.path.isfile(os.path.join(path, "latest")))


def import_hf(hf_dir: str, checkpoint_dir: str, loops=None) -> str:
    """A weights-only megatron checkpoint of `hf_dir` at step 0 in `checkpoint_dir` (iter_0000000
    + `latest`, sealed), with the directory's tokenizer.model when it has one: what
    `python -m scripts.import_hf` writes. Nothing is written when `hf_dir` fails verification
    (handoff.read_hf), overlaps `checkpoint_dir`, or `checkpoint_dir` holds anything
    (pretrain/checkpoint/destination.py). `loops`: the loop settings a Llama directory (no loops of
    its own) is imported under, as the block of that looped model. Returns the iter_ folder."""
    from omegaconf import OmegaConf

    from handoff.read import read_hf

    refuse_overlap({"--hf": hf_dir}, checkpoint_dir, "--out")
    refuse_used(checkpoint_dir, "--out")  # again under the lock below; first before the read
    model_cfg, weights = read_hf(hf_dir, loops)
    with new_checkpoint_dir(checkpoint_dir, "--out"):
        tmp = os.path.join(checkpoint_dir, files.tmp_name(0))
        os.makedirs(tmp)
        try:
            fields = dataclasses.asdict(model_cfg)
            state = {"step": 0, "consumed_samples": 0, "model": fields, "world_size": 1,
                     "imported_from": os.path.abspath(hf_dir)}
            write_weights_only(tmp, weights, model_cfg, state, "megatron",
                               config_yaml=OmegaConf.to_yaml({"model": fields}))
            tokenizer = os.path.join(hf_dir, "tokenizer.model")
            if os.path.isfile(tokenizer):
                shutil.copyfile(tokenizer, os.path.join(tmp, files.TOKENIZER_FILE))
            return publish_checkpoint(checkpoint_dir, files.iter_name(0), tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _stage(source: str, engine_name: str, staging: str, model_fields: dict) -> str:
    """A weights-only checkpoint of `engine_name` made from `source` (rank 0); its iter_ folder.
    A Llama directory becomes this run's model: its block under the run's loop settings."""
    from handoff.llama_block import LOOP_FIELDS
    from pretrain.checkpoint.convert import convert_checkpoint

    shutil.rmtree(staging, ignore_errors=True)
    if is_hf_dir(source):
        loops = {key: model_fields[key] for key in LOOP_FIELDS if key in model_fields}
        folder = import_hf(source, staging, loops)  # megatron's format
        if engine_name == "megatron":
            return folder
        source = folder
    folder = resolve_checkpoint(source)
    # Checksums before its loopcoder.json is parsed (rank 0 alone: not collective).
    if verify_complete(folder, collective=False).get("engine", "megatron") == engine_name:
        return folder
    return convert_checkpoint(folder, os.path.join(staging, engine_name))


def _check_loaded_weights(engine, folder: str) -> None:
    """NaN/inf in the loaded parameters (each rank its own part), named: a checkpoint that went
    bad must not start a run whose first step is NaN (the HF path is checked as it is read)."""
    from handoff.published_config import PublishedFormatError
    from handoff.weight_checks import check_finite

    try:
        for name, param in engine.model.named_parameters():
            check_finite(name, param.data, folder)
    except PublishedFormatError as error:
        raise CheckpointError(str(error)) from None


def init_from(source: str, engine, model_fields: dict, root: str, *, verify: str = "full",
              allow_model_change=()) -> str:
    """Load the weights of `source` into `engine` (every rank); returns the folder read."""
    staging = os.path.join(root, STAGING_DIR)
    try:  # on_main raises on every rank together: the staging folder goes on every failure
        folder = on_main(f"cannot read checkpoint.init_from={source}",
                         lambda: _stage(source, engine.name, staging, model_fields))
        state = verify_complete(folder, verify)
        check_model_fields(folder, state["model"], model_fields, allow_model_change,
                           other_way="another checkpoint.init_from")
        engine.load_payload(folder, state, weights_only=True)
        collectively(f"checkpoint.init_from={source} holds weights that cannot train",
                     lambda: _check_loaded_weights(engine, folder))
    finally:
        barrier()
        if is_main():
            shutil.rmtree(staging, ignore_errors=True)
    logger.info("initialised the weights from %s (step 0: fresh optimizer, schedule and data order)",
                source)
    return folder
