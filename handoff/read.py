"""Read a published-layout Hugging Face directory into our names, verifying it first.

    model_cfg, weights = read_hf(hf_dir)        # checkpoint.init_from and scripts.import_hf
                                                # (pretrain/checkpoint/init.py) call this
    read_hf(llama_dir, loops={"num_loops": 2, ...})  # a Llama as the block of a looped model

Every check runs before a tensor is converted, and each refusal (PublishedFormatError, exit 4)
names the file and the fix: config.json missing, not a JSON object, of an unknown model_type or
with a field of the wrong type or range; an index that is not one or names files outside the
directory; weights that are pickles, or a shard whose header does not match its bytes; a tensor
missing, extra, of a shape config.json disagrees with, or of a non-float dtype; a tokenizer.json /
tokenizer.model its library cannot load, or with more ids than the model's vocabulary. While the
tensors stream in, each is checked to be finite (no NaN, no inf). Tensors come back as float32
(what our checkpoints hold), bit for bit what the file stores when it stores float32 or bfloat16.
"""

from __future__ import annotations

import json
import os
from typing import Dict, Optional, Tuple

import torch

from handoff.llama_block import as_block_of
from handoff.published_config import (LLAMA_FAMILY, PublishedFormatError, family_of,
                                      model_config_from_published)
from handoff.safetensors_files import SafetensorsReader, file_in
from handoff.tensor_names import (IGNORED_SUFFIXES, canonical_name, from_published,
                                  published_shapes)
from handoff.tokenizer_files import tokenizer_vocab_sizes
from pretrain.checkpoint.weight_checks import check_finite, check_float_dtype
from model.config import ModelConfig

CONFIG_FILE = "config.json"


def read_published_config(hf_dir: str) -> Tuple[dict, ModelConfig]:
    if not os.path.isdir(hf_dir):  # a wrong path given, like any tool's: a config error (exit 2)
        from model.config import ConfigError

        raise ConfigError(f"{hf_dir} is not a folder; pass a Hugging Face model directory "
                          "(config.json + safetensors), e.g. one scripts.export_hf wrote")
    path = os.path.join(hf_dir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise PublishedFormatError(f"{path} is missing; pass a Hugging Face model directory "
                                   "(config.json + safetensors), e.g. one scripts.export_hf wrote")
    try:
        with open(file_in(hf_dir, CONFIG_FILE), encoding="utf-8") as stream:
            config = json.load(stream)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise PublishedFormatError(f"{path} is not JSON ({error}); copy it again from the "
                                   "model's source") from error
    if not isinstance(config, dict):
        raise PublishedFormatError(f"{path} holds a JSON {type(config).__name__}, not the object "
                                   "of a model's config.json; copy it again from the model's source")
    return config, model_config_from_published(config, path)


def verify_hf_dir(hf_dir: str) -> Tuple[ModelConfig, SafetensorsReader, Dict[str, str]]:
    """(ModelConfig, reader, {published name: name in the files}) once everything checks out."""
    config, model_cfg = read_published_config(hf_dir)
    config_path = os.path.join(hf_dir, CONFIG_FILE)
    reader = SafetensorsReader(hf_dir)
    stored = {canonical_name(name): name for name in reader.names()
              if not name.endswith(IGNORED_SUFFIXES)}
    expected = published_shapes(model_cfg)
    missing = [name for name in expected if name not in stored]
    extra = sorted(set(stored) - set(expected))
    if missing:
        raise PublishedFormatError(
            f"{hf_dir}: {len(missing)} tensor(s) that {config_path} implies are missing from the "
            f"safetensors files, e.g. {missing[:3]}; the directory is incomplete or its config.json "
            "describes another model")
    if extra:
        raise PublishedFormatError(
            f"{reader.file_of(stored[extra[0]])}: {len(extra)} tensor(s) that {config_path} has no "
            f"place for, e.g. {extra[:3]}; the config.json does not describe these weights (other "
            "num_hidden_layers, loop settings or tie_word_embeddings?)")
    for name, shape in expected.items():
        check_float_dtype(name, reader.dtype(stored[name]), reader.file_of(stored[name]))
        found = reader.shape(stored[name])
        if found != shape:
            raise PublishedFormatError(
                f"{reader.file_of(stored[name])}: {name} has shape {list(found)} but {config_path} "
                f"implies {list(shape)}; fix config.json or use the weights it describes")
    for vocab, tokenizer_path in tokenizer_vocab_sizes(hf_dir):
        if vocab > model_cfg.vocab_size:
            raise PublishedFormatError(
                f"{tokenizer_path} has {vocab} ids but the model's vocab_size is "
                f"{model_cfg.vocab_size} ({config_path}); ids past it would index outside the "
                "embedding: use the model's own tokenizer")
    return model_cfg, reader, stored


def read_hf(hf_dir: str, loops: Optional[dict] = None
            ) -> Tuple[ModelConfig, Dict[str, torch.Tensor]]:
    """(ModelConfig, {our TP=PP=1 PLTModel name: float32 tensor}) of a verified HF directory of
    either published family or a Llama. `loops`: loop settings (handoff.llama_block.LOOP_FIELDS)
    that make a Llama (any one-loop directory) the block of a looped model (gates at their initial
    values); a directory of a looped model has its own and ignores them. Raises
    PublishedFormatError naming the file and the fix."""
    try:
        model_cfg, reader, stored = verify_hf_dir(hf_dir)

        def get(name):  # checked as each tensor streams in: no second copy of the model
            tensor = reader.get(stored[name]).float()
            check_finite(name, tensor, reader.file_of(stored[name]))
            return tensor

        weights = from_published(model_cfg, get)
    except OSError as error:  # unreadable, a folder where a file belongs, an I/O error
        raise PublishedFormatError(
            f"{error.filename or hf_dir} cannot be read ({error.strerror or error}); check its "
            "permissions, or copy the directory again") from error
    if loops and family_of(model_cfg) == LLAMA_FAMILY:
        model_cfg, weights = as_block_of(model_cfg, weights, loops)
    return model_cfg, weights
