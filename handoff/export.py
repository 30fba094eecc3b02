"""Write a checkpoint of either engine and any layout as a published-layout Hugging Face directory.

    export_checkpoint(checkpoint, out_dir, dtype="bf16", max_shard_size="5GB")
    export_config_only(model_cfg, out_dir)        # config.json and code only (no weights)

The directory holds README.md (what the model is and which tools load it: handoff/loaders.py, also
logged as a warning when vLLM/SGLang cannot serve it), config.json (the family's published keys and
an auto_map to the files below; an R=1 model is a Llama: no auto_map, no code),
generation_config.json, safetensors shards + model.safetensors.index.json (published tensor names,
in the chosen dtype), the tokenizer (tokenizer.model, tokenizer.json, tokenizer_config.json: the
same ids as data/tokenizer.py, EOD as eos) and handoff/hf_files/*.py (our transformers
implementation, self-contained). A model that vLLM and SGLang would load but compute differently
(handoff/loaders.py) is refused unless `allow_served_differently`.

Memory: the checkpoint is read once in float32 (pretrain.checkpoint.read_weights), then each
tensor is converted and handed to the shard writer and its source dropped, so beyond the source
at most one output shard is in memory: peak about one fp32 copy of the model plus one shard.

Nothing is written unless everything succeeds: the directory is built as a hidden sibling and
renamed into place at the end (pretrain/checkpoint/destination.py: staged, fsync'ed before the
rename); an existing `out_dir` that is not an empty folder is refused.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil

import torch

from handoff.loaders import readme, refusal, who_loads
from handoff.published_config import LLAMA_FAMILY, published_config
from handoff.safetensors_files import ShardWriter, parse_size
from handoff.tensor_names import to_published
from handoff.tokenizer_files import write_tokenizer_files
from pretrain.checkpoint.weight_checks import check_finite_weights

logger = logging.getLogger(__name__)
HF_FILES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hf_files")
DTYPES = {"bf16": (torch.bfloat16, "bfloat16"), "fp32": (torch.float32, "float32")}


def _dtype(name: str):
    if name not in DTYPES:
        raise ValueError(f"--dtype {name!r}; use one of {sorted(DTYPES)}")
    return DTYPES[name]


def _write_json(folder: str, name: str, content: dict) -> None:
    with open(os.path.join(folder, name), "w") as stream:
        json.dump(content, stream, indent=2)
        stream.write("\n")


def _check_exportable(model_cfg, where: str, allow_served_differently: bool) -> None:
    """Refuse, before anything is read or written, a model with no published format (R=1 is
    Llama, so every R is one) and, unless allowed, one vLLM/SGLang would serve differently."""
    from model.config import ConfigError

    published_config(model_cfg)
    if who_loads(model_cfg).served_differently and not allow_served_differently:
        raise ConfigError(refusal(model_cfg, where))


def _write_code_and_configs(folder: str, model_cfg, dtype_name: str, ids: dict) -> None:
    statement = who_loads(model_cfg)
    if not statement.published_serve_it:
        logger.warning("this export loads in transformers (%s); vLLM and SGLang: %s (README.md in "
                       "the directory says the same)", statement.transformers, statement.published)
    config = published_config(model_cfg, dtype_name, ids["bos_token_id"], ids["eos_token_id"])
    _write_json(folder, "config.json", config)
    _write_json(folder, "generation_config.json", {**ids, "do_sample": False})
    with open(os.path.join(folder, "README.md"), "w") as stream:
        stream.write(readme(model_cfg, dtype_name))
    if statement.family != LLAMA_FAMILY:  # a Llama loads natively everywhere: no code to ship
        for path in glob.glob(os.path.join(HF_FILES, "*.py")):
            shutil.copyfile(path, os.path.join(folder, os.path.basename(path)))


def export_config_only(model_cfg, out_dir: str, dtype: str = "bf16",
                       allow_served_differently: bool = False) -> str:
    """config.json, generation_config.json, README.md and the code for `model_cfg`: no weights are
    built (nothing is allocated: what `--config-only model=plt_7b` writes)."""
    _, dtype_name = _dtype(dtype)
    _check_exportable(model_cfg, "the model (--config-only)", allow_served_differently)
    from data.tokenizer import BOS_ID, EOD_ID, PAD_ID
    from pretrain.checkpoint.destination import staged

    with staged(out_dir, "--out") as tmp:
        ids = {"bos_token_id": BOS_ID, "eos_token_id": EOD_ID, "pad_token_id": PAD_ID}
        _write_code_and_configs(tmp, model_cfg, dtype_name, ids)
    return os.path.abspath(out_dir)


def export_checkpoint(checkpoint: str, out_dir: str, dtype: str = "bf16",
                      max_shard_size: str = "5GB", iteration=None, allow_pickle: bool = False,
                      allow_served_differently: bool = False) -> str:
    """Export the checkpoint `checkpoint` (an iter_ folder, or a checkpoint dir: its `latest`, or
    iter_<iteration> when given) to `out_dir`; returns the directory. `allow_served_differently`:
    export a model vLLM/SGLang would load but compute differently (handoff/loaders.py)."""
    from pretrain.checkpoint import checkpoint_tokenizer, files, read_weights, resolve_checkpoint
    from pretrain.checkpoint import verify_complete
    from pretrain.checkpoint.destination import refuse_overlap, staged
    from pretrain.checkpoint.weights import read_model_config

    torch_dtype, dtype_name = _dtype(dtype)
    shard_bytes = parse_size(max_shard_size)
    if iteration is not None:
        folder = os.path.join(checkpoint, files.iter_name(int(iteration)))
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"{folder} does not exist; the checkpoints of {checkpoint} "
                                    f"are {files.list_checkpoints(checkpoint)}")
    else:
        folder = resolve_checkpoint(checkpoint)
    refuse_overlap({"--checkpoint": checkpoint, "its checkpoint": folder}, out_dir, "--out")
    verify_complete(folder)  # checksums before any of its files is parsed
    # An unexportable model fails before reading.
    _check_exportable(read_model_config(folder), folder, allow_served_differently)
    tokenizer = checkpoint_tokenizer(folder)
    model_cfg, weights, _ = read_weights(folder, allow_pickle=allow_pickle)
    check_finite_weights(weights, folder)  # NaN/inf refused by name before anything is written
    tokenizer.check_model_vocab(model_cfg.vocab_size)
    with staged(out_dir, "--out") as tmp:
        ids = write_tokenizer_files(tokenizer, tmp, model_cfg.max_position_embeddings)
        _write_code_and_configs(tmp, model_cfg, dtype_name, ids)
        writer = ShardWriter(tmp, shard_bytes)
        for name, tensor in to_published(model_cfg, weights):
            # A copy of its own: split views (q/k/v, gate/up) must not share storage in a shard.
            writer.add(name, tensor.to(torch_dtype, copy=True))
            del tensor
        writer.finish()
    return os.path.abspath(out_dir)
