"""(model, tokenizer) to evaluate, from wherever a model lives: the seam where other formats plug
in (a Hugging Face export, once `handoff.load` exists, returns the same triple).

    model, tokenizer, source = load_checkpoint("runs/x/checkpoints")

The model is rebuilt in one process from the checkpoint (TP=PP=1, fp32, eval mode; any engine and
layout that wrote it); the tokenizer is the one the run trained with. ``source`` says what was
loaded, for the summary: checkpoint folder, step, num_loops, clp.
"""

from __future__ import annotations

from typing import Tuple


def load_checkpoint(path: str) -> Tuple[object, object, dict]:
    """``path``: an iter_XXXXXXX/ folder or a checkpoint dir holding a `latest` file."""
    from pretrain.checkpoint import checkpoint_tokenizer, load_model, resolve_checkpoint
    from pretrain.distributed import single_process_world

    folder = resolve_checkpoint(path)
    single_process_world()
    model, _, step = load_model(folder)
    tokenizer = checkpoint_tokenizer(folder)
    tokenizer.check_model_vocab(model.config.vocab_size)
    return model, tokenizer, {"checkpoint": folder, "step": step,
                              "num_loops": model.config.num_loops, "clp": model.config.clp}
