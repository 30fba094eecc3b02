"""`data.*`: the one schema of the data pipeline (plain fields, so Hydra's structured config checks it).

`conf/data/stdlib_code.yaml` fills it for the embedded job; `conf/data/code_blend_example.yaml` shows a
multi-corpus blend. Paths are relative to the working directory the job starts in.
"""

import os
from dataclasses import dataclass, field
from typing import List


def default_cache_dir() -> str:
    """Where the embedded corpus is built: $LOOPCODER_CACHE/data, else .cache/loopcoder/data
    (relative to the working directory)."""
    return os.path.join(os.environ.get("LOOPCODER_CACHE", ".cache/loopcoder"), "data")


@dataclass
class DataConfig:
    # [[weight, path-prefix], ...]. A prefix names one megatron indexed dataset (`prefix.bin/.idx`) or
    # the shards `prefix-00000-of-0000N.bin/.idx` written by scripts/preprocess.py. Empty: the
    # embedded stdlib corpus, built on first use under `cache_dir`.
    blend: List = field(default_factory=list)
    valid_blend: List = field(default_factory=list)
    # sentencepiece model. Empty: the stdlib job trains one into `cache_dir` (a user blend needs one).
    tokenizer_model: str = ""
    cache_dir: str = field(default_factory=default_cache_dir)
    # Vocabulary of the tokenizer trained for the default corpus; 4096 = conf/model/plt_tiny (a model
    # vocab may be padded larger, never smaller).
    vocab_size: int = 4096
    # Fill-in-the-middle (StarCoder/DeepSeek-Coder style): share of documents turned into FIM
    # examples, and the share of those in SPM rather than PSM order.
    fim_rate: float = 0.0
    fim_spm_rate: float = 0.5
    # Worker processes for tokenizing (datasets.map num_proc) and shards per corpus.
    num_workers: int = 2
    num_shards: int = 2
    # Resume even though files/tokenizer/seed/seq length differ from the checkpoint's (order changes).
    allow_fingerprint_change: bool = False
    # Default corpus: the stdlib's own .py files. Directory names skipped anywhere in the path (tests,
    # generated tables, installed third-party packages: see data/corpus.py for why).
    stdlib_exclude_dirs: List = field(
        default_factory=lambda: [
            "site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__",
            "encodings", "pydoc_data",
        ]
    )
    stdlib_valid_fraction: float = 0.05
    # 0 = every file; tests use a few dozen to stay fast.
    stdlib_max_files: int = 0
