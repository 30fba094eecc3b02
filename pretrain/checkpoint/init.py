"""`checkpoint.init_from`: start a run from another model's weights (continued pretraining,
annealing), at step 0 with a fresh optimizer, LR schedule and data order.

The source is a Hugging Face directory in a published LoopCoder layout (handoff/import_hf.py: read,
verified, never unpickled; the entry hands that importer down) or a loopcoder checkpoint of either
engine and any layout (an iter_ folder or a checkpoint dir with `latest`). Whatever the source,
rank 0 stages it as a weights-only checkpoint of this run's engine under
`<checkpoint.dir>/.init_from/` (an HF directory through import_hf, the other engine's checkpoint
through the engine conversion); then every rank loads the model part
from it as from any checkpoint (resharding to this run's TP/PP layout, checksums verified, model
fields compared), and the staging folder is removed. A run that already has a checkpoint of its own
in checkpoint.dir resumes from it instead: init_from only starts a run.
"""

from __future__ import annotations

import logging
import os
import shutil

from pretrain.collective import collectively, on_main
from pretrain.checkpoint.resume import check_model_fields, resolve_checkpoint, verify_complete
from pretrain.distributed import barrier, is_main

logger = logging.getLogger(__name__)
STAGING_DIR = ".init_from"


def is_hf_dir(path: str) -> bool:
    return (os.path.isfile(os.path.join(path, "config.json"))
            and not os.path.isfile(os.path.join(path, "loopcoder.json"))
            and not os.path.isfile(os.path.join(path, "latest")))


def _stage(source: str, engine_name: str, staging: str, model_fields: dict, hf_importer) -> str:
    """A weights-only checkpoint of `engine_name` made from `source` (rank 0); its iter_ folder.
    An HF directory goes through `hf_importer` (init_from)."""
    from pretrain.checkpoint.convert import convert_checkpoint
    from pretrain.engines import engine_of

    shutil.rmtree(staging, ignore_errors=True)
    if is_hf_dir(source):
        folder = hf_importer(source, staging, model_fields)  # megatron's format
        if engine_name == "megatron":
            return folder
        source = folder
    folder = resolve_checkpoint(source)
    # Checksums before its loopcoder.json is parsed (rank 0 alone: not collective).
    if engine_of(verify_complete(folder, collective=False)) == engine_name:
        return folder
    return convert_checkpoint(folder, os.path.join(staging, engine_name), target=engine_name)


def _check_loaded_weights(engine, folder: str) -> None:
    """NaN/inf in the loaded parameters (each rank its own part), named: a checkpoint that went
    bad must not start a run whose first step is NaN (the HF path is checked as it is read)."""
    from pretrain.checkpoint.weight_checks import check_finite

    for name, param in engine.model.named_parameters():
        check_finite(name, param.data, folder)


def init_from(source: str, engine, model_fields: dict, root: str, *, verify: str = "full",
              allow_model_change=(), hf_importer) -> str:
    """Load the weights of `source` into `engine` (every rank); returns the folder read.
    `hf_importer(hf_dir, checkpoint_dir, model_fields)`: how an HF directory becomes a checkpoint
    (handoff/import_hf.py import_for_run, handed down by the entry, pretrain/train.py: pretrain/
    never imports handoff/, which sits above it: docs/architecture.md#floors)."""
    staging = os.path.join(root, STAGING_DIR)
    try:  # on_main raises on every rank together: the staging folder goes on every failure
        folder = on_main(f"cannot read checkpoint.init_from={source}",
                         lambda: _stage(source, engine.name, staging, model_fields, hf_importer))
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
