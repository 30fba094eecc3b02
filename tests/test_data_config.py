"""The conf/data group fills DataConfig exactly: no unknown key, no wrong type."""

import os

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from data.config import DataConfig

CONF_DIR = os.path.join(os.path.dirname(__file__), "..", "conf", "data")


@pytest.mark.parametrize("name", ["stdlib_code", "code_blend_example"])
def test_data_group_validates_against_the_schema(name):
    with initialize_config_dir(config_dir=os.path.abspath(CONF_DIR), version_base="1.3"):
        composed = compose(config_name=name)
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DataConfig), composed.data))
    assert isinstance(cfg, DataConfig)
    assert cfg.fim_rate == (0.5 if name == "code_blend_example" else 0.0)
    assert bool(cfg.blend) == (name == "code_blend_example")
