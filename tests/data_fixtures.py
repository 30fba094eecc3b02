"""Shared, session-cached data for tests/test_data_*.py: a 40-file stdlib corpus, a 600-piece tokenizer,
its two-shard train split. Built once per pytest process (module-level cache, because a fixture
imported into several modules would be rebuilt per module) in a temp folder removed at exit."""

import atexit
import functools
import shutil
import tempfile

import pytest

from data.config import DataConfig
from data.prepare import prepare_data

SEQ_LENGTH = 32


@functools.lru_cache(maxsize=None)
def _workdir() -> str:
    path = tempfile.mkdtemp(prefix="loopcoder-test-data-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def small_config(**overrides) -> DataConfig:
    fields = dict(cache_dir=f"{_workdir()}/cache", vocab_size=600, stdlib_max_files=40, num_shards=2,
                  num_workers=2, stdlib_valid_fraction=0.1)
    fields.update(overrides)
    return DataConfig(**fields)


@functools.lru_cache(maxsize=None)
def _prepared():
    return prepare_data(small_config(), SEQ_LENGTH)


@pytest.fixture
def data_cfg() -> DataConfig:
    return small_config()


@pytest.fixture
def prepared():
    return _prepared()

