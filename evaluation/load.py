"""(model, tokenizer) to evaluate, from wherever a model lives.

    model, tokenizer, source = load_checkpoint("runs/x/checkpoints")
    model, tokenizer, source = load_hf("hf/my-loopcoder")   # a published-layout HF directory

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


def load_hf(hf_dir: str) -> Tuple[object, object, dict]:
    """A Hugging Face directory in a published LoopCoder layout (handoff/: verified, never
    unpickled), run by this framework's own model and decoding; its tokenizer.model."""
    import os

    from data.tokenizer import CodeTokenizer
    from handoff.published_config import PublishedFormatError
    from handoff.read import read_hf
    from model import PLTModel
    from pretrain.distributed import single_process_world

    tokenizer_path = os.path.join(hf_dir, "tokenizer.model")
    if not os.path.isfile(tokenizer_path):
        raise PublishedFormatError(f"{hf_dir} has no tokenizer.model (the sentencepiece model "
                                   f"loopcoder's export writes); evaluate a loopcoder export or "
                                   f"its checkpoint (--checkpoint)")
    single_process_world()
    model_cfg, weights = read_hf(hf_dir)
    model_cfg.attention_backend = "auto"
    model = PLTModel(model_cfg.build())
    model.load_state_dict(weights)
    tokenizer = CodeTokenizer(tokenizer_path)
    tokenizer.check_model_vocab(model_cfg.vocab_size)
    return model.eval(), tokenizer, {"hf": os.path.abspath(hf_dir),
                                     "num_loops": model_cfg.num_loops, "clp": model_cfg.clp}
