"""The engine table (pretrain/engines/__init__.py): one entry per engine, read by everything that
asks which engine wrote a checkpoint, how to read its payload, or what the engine refuses."""

import pytest

from model.config import ConfigError
from pretrain.engines import ENGINES, build_engine, check_engine_config, engine_of, payload_format


def test_every_entry_names_its_engine_and_reads_and_writes_its_payload():
    assert set(ENGINES) == {"megatron", "deepspeed"}
    for name, entry in ENGINES.items():
        assert entry.engine.name == name
        assert payload_format(name) is entry.payload
        for function in ("check_complete", "read_weights", "write_weights"):
            assert callable(getattr(entry.payload, function)), (name, function)


def test_a_checkpoint_that_does_not_name_its_engine_was_written_by_megatron():
    """Checkpoints from before loopcoder.json recorded the engine keep loading as megatron's."""
    assert engine_of({"step": 3}) == "megatron"
    assert engine_of({"step": 3, "engine": "deepspeed"}) == "deepspeed"


def test_an_unknown_engine_is_refused_by_name_everywhere():
    with pytest.raises(ValueError, match="unknown engine 'fsdp'; checkpoints are written by"):
        payload_format("fsdp")

    class Config:
        engine = "fsdp"

    with pytest.raises(ValueError, match="unknown engine 'fsdp'"):
        build_engine(Config(), None, None)
    with pytest.raises(ConfigError, match="engine='fsdp'; use megatron or deepspeed"):
        check_engine_config(Config())


def test_the_engines_own_refusals_come_from_its_entry():
    from pretrain.config import compose, validate
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_object(compose(["engine=deepspeed", "parallel.tp=2"]))
    with pytest.raises(ConfigError, match="engine=deepspeed runs data parallel only"):
        validate(cfg, world_size=2)
    assert ENGINES["megatron"].check_config is None  # megatron: the shared rules are its own

