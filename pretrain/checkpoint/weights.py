"""A checkpoint's model weights in one process, whichever engine and layout wrote it: what the
tools use (generation, diagnostics, engine conversion, export).

    model_cfg = read_model_config(folder)                  # ModelConfig from its config.yaml
    model_cfg, weights, state = read_weights(folder)       # full tensors, PLTModel names (TP=PP=1)
    model, config, step = load_model(folder)               # a PLTModel with them, in eval mode
    tokenizer = checkpoint_tokenizer(folder)               # the run's CodeTokenizer
    with staged_checkpoint(root, step) as tmp:             # a weights-only checkpoint
        write_weights_only(tmp, weights, model_cfg, state, engine_name, config_yaml=...)

Reading verifies the checkpoint first (pretrain/checkpoint/resume.py: verify_complete) and needs a
world of one (pretrain.distributed.single_process_world), which it starts when there is none.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Dict, Tuple

import torch
from omegaconf import OmegaConf

import pretrain.checkpoint.files as files
from pretrain.checkpoint.resume import verify_complete


def read_model_config(folder: str):
    """The checkpoint's architecture (the `model` node of its config.yaml) as a ModelConfig."""
    from model import ModelConfig

    resolved = OmegaConf.load(os.path.join(folder, files.CONFIG_FILE))
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), resolved.model))


def read_weights(folder: str, verify: str = "full",
                 allow_pickle: bool = False) -> Tuple[object, Dict[str, torch.Tensor], dict]:
    """(ModelConfig, full fp32 weights named as a PLTModel at TP=PP=1, trainer state).
    verify: the checksum check (full | headers); allow_pickle: DeepSpeed files beyond its data
    classes (pretrain/engines/deepspeed_checkpoint.py)."""
    from pretrain.distributed import single_process_world
    from pretrain.engines import engine_of, payload_format

    state = verify_complete(folder, verify)
    single_process_world()
    model_cfg = read_model_config(folder)
    weights = payload_format(engine_of(state)).read_weights(
        folder, state, model_cfg, allow_pickle=allow_pickle)
    return model_cfg, weights, state


@contextlib.contextmanager
def staged_checkpoint(root: str, step: int):
    """Write `root/iter_<step>` in the temp folder this yields; on success it is sealed
    (checksums.json), published (pretrain/checkpoint/destination.py: staged) and named by `latest`,
    on a failure removed: the Checkpointer's save, for a tool writing in one process."""
    from pretrain.checkpoint.destination import staged
    from pretrain.checkpoint.integrity import seal

    name = files.iter_name(step)
    with staged(os.path.join(root, name), tmp_name=files.tmp_name(step), replace=True) as tmp:
        yield tmp
        seal(tmp)
    files.write_latest(root, name)


def write_weights_only(tmp: str, weights: Dict[str, torch.Tensor], model_cfg, state: dict,
                       engine_name: str, *, config_yaml: str) -> None:
    """A weights-only checkpoint of `engine_name`'s format in the (new, empty) folder `tmp`: the
    payload, config.yaml and a loopcoder.json marked `weights_only` (the trainer restores the
    weights and starts the optimizer's moments from zero)."""
    from pretrain.distributed import single_process_world
    from pretrain.engines import payload_format

    single_process_world()
    payload_format(engine_name).write_weights(tmp, weights, model_cfg)
    new_state = {key: value for key, value in state.items() if key != "zero_stage"}
    new_state.update(engine=engine_name, weights_only=True)
    files.write_durably(os.path.join(tmp, files.STATE_FILE),
                        lambda stream: json.dump(new_state, stream, indent=1))
    files.write_durably(os.path.join(tmp, files.CONFIG_FILE), lambda stream: stream.write(config_yaml))


def load_model(folder: str, verify: str = "full", allow_pickle: bool = False) -> tuple:
    """(PLTModel with the checkpoint's weights at TP=PP=1, fp32, eval mode; the checkpoint's
    resolved config; its step): what generation and diagnostics run on."""
    from model import PLTModel

    model_cfg, weights, state = read_weights(folder, verify, allow_pickle)
    model_cfg.attention_backend = "auto"  # the saved run may have said flash; the math is the same
    model = PLTModel(model_cfg.build())
    model.load_state_dict(weights)
    return model.eval(), OmegaConf.load(os.path.join(folder, files.CONFIG_FILE)), state["step"]


def checkpoint_tokenizer(folder: str):
    """The tokenizer the run trained with: the checkpoint's own copy, or (checkpoints written
    before they carried one) the one its config's data settings name or build."""
    from data.config import DataConfig
    from data.prepare import prepare_data
    from data.tokenizer import CodeTokenizer

    own = os.path.join(folder, files.TOKENIZER_FILE)
    if os.path.isfile(own):
        return CodeTokenizer(own)
    config = OmegaConf.load(os.path.join(folder, files.CONFIG_FILE))
    data_cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DataConfig), config.data))
    return CodeTokenizer(prepare_data(data_cfg, int(config.train.seq_length)).tokenizer_model)
