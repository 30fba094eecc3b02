"""Read a published-layout Hugging Face directory into our names, verifying it first.

    model_cfg, weights = read_hf(hf_dir)        # checkpoint.init_from and scripts.import_hf
                                                # (pretrain/checkpoint/init.py) call this
    read_hf(llama_dir, loops={"num_loops": 2, ...})  # a Llama as the block of a looped model

Every check runs before a tensor is converted, and each refusal (PublishedFormatError) names the
file and the fix: config.json missing or of an unknown model_type; weights that are pickles; a
tensor missing, extra, or of a shape config.json disagrees with; a tokenizer with more ids than
the model's vocabulary. Tensors come back as float32 (what our checkpoints hold), bit for bit
what the file stores when it stores float32 or bfloat16.
"""

from __future__ import annotations

import json
import os
from typing import Dict, Optional, Tuple

import torch

from handoff.llama_block import as_block_of
from handoff.published_config import (LLAMA_FAMILY, PublishedFormatError, family_of,
                                      model_config_from_published)
from handoff.safetensors_files import SafetensorsReader
from handoff.tensor_names import (IGNORED_SUFFIXES, canonical_name, from_published,
                                  published_shapes)
from model.config import ModelConfig

CONFIG_FILE = "config.json"


def read_published_config(hf_dir: str) -> Tuple[dict, ModelConfig]:
    path = os.path.join(hf_dir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise PublishedFormatError(f"{path} is missing; pass a Hugging Face model directory "
                                   "(config.json + safetensors), e.g. one scripts.export_hf wrote")
    try:
        with open(path) as stream:
            config = json.load(stream)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PublishedFormatError(f"{path} is not JSON ({error})") from error
    return config, model_config_from_published(config, path)


def tokenizer_vocab_size(hf_dir: str):
    """How many ids the directory's tokenizer can produce (None without a tokenizer)."""
    path = os.path.join(hf_dir, "tokenizer.json")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as stream:
            definition = json.load(stream)
        ids = set(definition.get("model", {}).get("vocab", {}).values())
        ids |= {token["id"] for token in definition.get("added_tokens", [])}
        return (max(ids) + 1) if ids else 0, path
    path = os.path.join(hf_dir, "tokenizer.model")
    if os.path.isfile(path):
        import sentencepiece as spm

        return spm.SentencePieceProcessor(model_file=path).get_piece_size(), path
    return None, None


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
        found = reader.shape(stored[name])
        if found != shape:
            raise PublishedFormatError(
                f"{reader.file_of(stored[name])}: {name} has shape {list(found)} but {config_path} "
                f"implies {list(shape)}; fix config.json or use the weights it describes")
    vocab, tokenizer_path = tokenizer_vocab_size(hf_dir)
    if vocab is not None and vocab > model_cfg.vocab_size:
        raise PublishedFormatError(
            f"{tokenizer_path} has {vocab} ids but the model's vocab_size is {model_cfg.vocab_size} "
            f"({config_path}); ids past it would index outside the embedding: use the model's own "
            "tokenizer")
    return model_cfg, reader, stored


def read_hf(hf_dir: str, loops: Optional[dict] = None
            ) -> Tuple[ModelConfig, Dict[str, torch.Tensor]]:
    """(ModelConfig, {our TP=PP=1 PLTModel name: float32 tensor}) of a verified HF directory of
    either published family or a Llama. `loops`: loop settings (handoff.llama_block.LOOP_FIELDS)
    that make a Llama (any one-loop directory) the block of a looped model (gates at their initial
    values); a directory of a looped model has its own and ignores them. Raises
    PublishedFormatError naming the file and the fix."""
    model_cfg, reader, stored = verify_hf_dir(hf_dir)
    weights = from_published(model_cfg, lambda name: reader.get(stored[name]).float())
    if loops and family_of(model_cfg) == LLAMA_FAMILY:
        model_cfg, weights = as_block_of(model_cfg, weights, loops)
    return model_cfg, weights
