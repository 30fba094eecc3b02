"""`data.*`: the one schema of the data pipeline (plain fields, so Hydra's structured config checks it).

`conf/data/stdlib_code.yaml` fills it for the embedded job; `conf/data/code_blend_example.yaml` shows a
multi-corpus blend. Paths are relative to the working directory the job starts in.
"""

import numbers
import os
from dataclasses import dataclass, field
from typing import List

from data.errors import DataConfigError

# sentencepiece with byte fallback needs the 256 byte pieces and loopcoder's 7 special pieces
# (unk, bos, eod, pad, 3 FIM symbols) before it learns a single merge.
MIN_TRAINED_VOCAB = 256 + 7 + 1


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

    def validate(self, reads_valid_blend: bool = True) -> None:
        """Refuse values that cannot work, before anything is built or queued: raises
        DataConfigError naming the key and the fix (pretrain/config_rules.py calls it).
        `reads_valid_blend`: the run reads the held-out batch, so a user blend needs its
        validation blend (pretrain/config_rules.py reads_held_out_batch says when); data/prepare.py,
        which only builds or checks the data, passes False."""

        def need(ok: bool, message: str) -> None:
            if not ok:
                raise DataConfigError(message)

        for key in ("fim_rate", "fim_spm_rate"):
            value = getattr(self, key)
            need(0.0 <= value <= 1.0, f"data.{key}={value}; it is a probability: use a value in [0, 1]")
        for key in ("num_workers", "num_shards"):
            value = getattr(self, key)
            need(value >= 1, f"data.{key}={value}; it must be >= 1")
        need(0.0 <= self.stdlib_valid_fraction < 1.0,
             f"data.stdlib_valid_fraction={self.stdlib_valid_fraction}; use a value in [0, 1) "
             f"(the share of stdlib files held out for validation)")
        need(self.stdlib_max_files >= 0,
             f"data.stdlib_max_files={self.stdlib_max_files}; use 0 (every file) or a positive count")
        need(bool(self.cache_dir), "data.cache_dir is empty; give a folder for the built corpus")
        for key in ("blend", "valid_blend"):
            for entry in getattr(self, key):
                entry = list(entry) if isinstance(entry, (list, tuple)) else [entry]
                need(len(entry) == 2 and isinstance(entry[0], numbers.Real)
                     and not isinstance(entry[0], bool) and entry[0] > 0
                     and isinstance(entry[1], str) and entry[1] != "",
                     f"data.{key} entry {entry!r}; each entry is [weight > 0, path prefix], e.g. "
                     f"data.{key}=[[1.0,data/python]]")
        if self.blend:
            need(bool(self.valid_blend) or not reads_valid_blend,
                 "data.blend is set but data.valid_blend is empty; give the held-out shards as "
                 "data.valid_blend=[[1.0,<prefix>]] (preprocess a validation split like the train one)")
            need(bool(self.tokenizer_model),
                 "data.blend is set but data.tokenizer_model is empty; give the sentencepiece model "
                 "the blend was preprocessed with")
        elif not self.tokenizer_model:
            need(self.vocab_size >= MIN_TRAINED_VOCAB,
                 f"data.vocab_size={self.vocab_size}; the stdlib tokenizer needs at least "
                 f"{MIN_TRAINED_VOCAB} pieces (256 bytes + 7 special pieces + 1)")
