"""Checkpoints: the Checkpointer every engine goes through (pretrain/checkpoint/checkpointer.py:
starting a run and saving), resume, the tools' view.

Layout of `checkpoint.dir`:

    latest                     one line, e.g. "iter_0000200"; replaced atomically, only after every
                               rank finished writing that checkpoint and it was verified
    iter_0000200/
        <the engine's payload>  megatron: dist_checkpointing files; deepspeed: DeepSpeed's files
        loopcoder.json         step, consumed_samples, scheduler, data loader state, model fields,
                               world size, engine
        config.yaml            the run's resolved config
        tokenizer.model        the run's sentencepiece tokenizer (a checkpoint is self-contained)
        rng/rank_00000.pt      per-rank RNG states (python, numpy, torch, cuda, megatron's tracker)
    .tmp_iter_0000300/         a save in progress (never read as a checkpoint)
"""

from pretrain.checkpoint.files import LATEST, STATE_FILE, iter_name, list_checkpoints
from pretrain.checkpoint.checkpointer import Checkpointer
from pretrain.checkpoint.resume import (load_checkpoint, model_fields_of, resolve_checkpoint,
                                        resolve_resume, verify_complete)
from pretrain.checkpoint.state import read_trainer_state
from pretrain.checkpoint.weights import checkpoint_tokenizer, load_model, read_weights
from pretrain.errors import CheckpointError

__all__ = ["CheckpointError", "Checkpointer", "checkpoint_tokenizer", "LATEST", "STATE_FILE",
           "iter_name", "list_checkpoints", "load_checkpoint", "load_model", "model_fields_of", "read_weights",
           "read_trainer_state", "resolve_checkpoint", "resolve_resume", "verify_complete"]
