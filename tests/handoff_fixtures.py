"""What the hand-off tests share (tests/test_handoff_*.py): a small PLT model written as a loopcoder
checkpoint (the trainer's frame, megatron payload, the small test tokenizer) and exported, and
tensor comparisons of HF directories.

The published families' gates and norms start at fixed values (gate 0, norms 1); the models here
get random ones so that every tensor reaches the output and a mix-up of two would show.
"""

import dataclasses
import os
import shutil

import torch

from tests.fixtures import build_small, small_model_config, small_prepared

VOCAB = 600  # the small test tokenizer's ids (a random model then only emits ids it can decode)


def model_and_config(seed=0, **overrides):
    """(PLTModel in eval mode, its ModelConfig): the small shape, random gates and norms."""
    fields = dict(vocab_size=VOCAB, swa_window=4, clp_emb_scale=0.7, clp_hidden_scale=0.3)
    fields.update(overrides)
    model = build_small(seed=seed, **fields)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(seed + 100)
        for name, param in model.named_parameters():
            if "layernorm" in name or "gate_norm" in name:
                param.copy_(1.0 + 0.2 * torch.randn(param.shape, generator=generator))
    return model, small_model_config(**fields)


def weights_of(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()
            if not k.endswith("_extra_state")}


def write_checkpoint(model, model_cfg, root, step=3) -> str:
    """`root/iter_<step>` + `latest`: a weights-only megatron checkpoint as the frame writes it,
    with the small test tokenizer (what scripts/export_hf reads)."""
    from omegaconf import OmegaConf

    from pretrain.checkpoint import files
    from pretrain.checkpoint.weights import write_weights_only

    tmp = os.path.join(root, files.tmp_name(step))
    os.makedirs(tmp)
    fields = dataclasses.asdict(model_cfg)
    write_weights_only(tmp, weights_of(model), model_cfg, {"step": step, "model": fields},
                       "megatron", OmegaConf.to_yaml({"model": fields}))
    shutil.copyfile(small_prepared().tokenizer_model, os.path.join(tmp, files.TOKENIZER_FILE))
    return files.publish_folder(root, files.iter_name(step), tmp)


def exported(model, model_cfg, tmp_path, dtype="fp32", **kwargs) -> str:
    from handoff.export import export_checkpoint

    write_checkpoint(model, model_cfg, str(tmp_path / "checkpoint"))
    return export_checkpoint(str(tmp_path / "checkpoint"), str(tmp_path / "hf"), dtype=dtype,
                             **kwargs)


def hf_tensors(hf_dir) -> dict:
    from handoff.safetensors_files import SafetensorsReader

    reader = SafetensorsReader(str(hf_dir))
    return {name: reader.get(name) for name in reader.names()}


def assert_bitwise_equal(got: dict, expected: dict):
    assert sorted(got) == sorted(expected)
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype, name
        assert torch.equal(got[name], tensor), name
