"""The trainer's view of the data: this rank's micro-batches of each global batch, resumable at any sample.

    loader = build_loader(cfg, prepared, "train", seq_length, global_batch_size, micro_batch_size,
                          dp_rank, dp_size, seed)
    micro_batches = loader.next_global_batch_micro_batches()   # list of global_batch_size //
        # (micro_batch_size * dp_size) dicts: tokens [mb, seq] int64, labels [mb, seq] int64 (tokens
        # shifted by one), loss_mask [mb, seq] float32, position_ids [mb, seq] int64. Causal
        # attention is implicit: no mask is built. Pass iter(micro_batches) to forward_backward_func.
    for micro_batches in loader: ...          # the same, forever (one global batch per step)
    loader.consumed_samples                   # global samples consumed by all ranks together
    loader.state_dict() / load_state_dict(d)  # {"consumed_samples", "fingerprint", ...}; small
    loader.held_out_batch(n)                  # this rank's share of global batches 0..n-1 (fixed)

Global batch b is global samples [b*G, (b+1)*G) of the blend's order (data/blend.py), which depends on
neither the data-parallel size nor the batch size nor the run length; rank r takes the contiguous
slice [r*G/dp, (r+1)*G/dp) of it. So a resume, also with another DP size or a longer run, continues at
sample `consumed_samples` of the very same sequence. The fingerprint (shard names/sizes, tokenizer,
seed, seq length, FIM settings) refuses a resume on changed data unless data.allow_fingerprint_change.
"""

import hashlib
import json
import logging
import numbers
from typing import Dict, List

import numpy
import torch

from data.blend import BlendedStream, derived_seed
from data.config import DataConfig
from data.errors import DataConfigError, DataError, FingerprintMismatch
from data.fim import FimTokens, apply_fim
from data.tokenizer import CodeTokenizer

__all__ = ["CodeLoader", "FingerprintMismatch", "build_loader"]

logger = logging.getLogger(__name__)

# What each fingerprint field stands for, in the message of a refused resume.
FINGERPRINT_FIELDS = {
    "data": "the shards (names, token and document counts) and blend weights",
    "num_shards": "the number of shards", "num_tokens": "the number of tokens",
    "tokenizer": "the tokenizer file (sha256)", "seed": "train.seed",
    "seq_length": "train.seq_length", "split": "the split", "fim_rate": "data.fim_rate",
    "fim_spm_rate": "data.fim_spm_rate",
}


class CodeLoader:
    def __init__(self, stream: BlendedStream, tokenizer: CodeTokenizer, split: str, seq_length: int,
                 global_batch_size: int, micro_batch_size: int, dp_rank: int, dp_size: int, seed: int,
                 fim_rate: float = 0.0, fim_spm_rate: float = 0.5,
                 allow_fingerprint_change: bool = False):
        if global_batch_size % (micro_batch_size * dp_size) != 0:
            raise DataConfigError(
                f"train.global_batch_size={global_batch_size} is not a multiple of "
                f"train.micro_batch_size * data-parallel size = {micro_batch_size} * {dp_size}; "
                f"pick a global batch size divisible by {micro_batch_size * dp_size}"
            )
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank={dp_rank} outside [0, dp_size={dp_size})")
        self.stream, self.tokenizer, self.split = stream, tokenizer, split
        self.seq_length, self.seed = seq_length, seed
        self.global_batch_size, self.micro_batch_size = global_batch_size, micro_batch_size
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.num_micro_batches = global_batch_size // (micro_batch_size * dp_size)
        self.fim_rate, self.fim_spm_rate = fim_rate, fim_spm_rate
        self.fim_tokens = FimTokens(tokenizer.fim_prefix_id, tokenizer.fim_middle_id,
                                    tokenizer.fim_suffix_id, tokenizer.eod_id)
        self.allow_fingerprint_change = allow_fingerprint_change
        self.consumed_samples = 0
        self.fingerprint_detail = {
            "data": _digest(stream.describe()), "num_shards": len(stream.shards),
            "num_tokens": sum(s.num_tokens for s in stream.shards), "tokenizer": tokenizer.sha256[:16],
            "seed": seed, "seq_length": seq_length, "split": split,
            "fim_rate": fim_rate, "fim_spm_rate": fim_spm_rate,
        }
        self.fingerprint = _digest(self.fingerprint_detail)
        self._position_ids = torch.arange(seq_length, dtype=torch.int64).expand(micro_batch_size, -1)

    def sample(self, global_index: int) -> numpy.ndarray:
        """Global sample `global_index`: seq_length+1 tokens, FIM applied, the same on every rank."""
        tokens = self.stream.sample(global_index)
        if self.fim_rate > 0:
            rng = numpy.random.default_rng(derived_seed(self.seed, "fim", self.split, global_index))
            tokens = apply_fim(tokens, rng, self.fim_rate, self.fim_spm_rate, self.fim_tokens)
        return tokens

    def rank_sample_indices(self, batch_start: int) -> range:
        """This rank's global sample indices in the global batch starting at `batch_start`."""
        per_rank = self.global_batch_size // self.dp_size
        first = batch_start + self.dp_rank * per_rank
        return range(first, first + per_rank)

    def _micro_batch(self, indices) -> Dict[str, torch.Tensor]:
        samples = torch.from_numpy(numpy.stack([self.sample(i) for i in indices]).astype(numpy.int64))
        labels = samples[:, 1:].contiguous()
        return {
            "tokens": samples[:, :-1].contiguous(),
            "labels": labels,
            # Megatron pads only a final partial validation sample; never learn to predict padding.
            "loss_mask": (labels != self.tokenizer.pad_id).to(torch.float32),
            "position_ids": self._position_ids[: len(indices)].clone(),
        }

    def micro_batches_at(self, batch_start: int) -> List[Dict[str, torch.Tensor]]:
        indices = list(self.rank_sample_indices(batch_start))
        mb = self.micro_batch_size
        return [self._micro_batch(indices[i * mb:(i + 1) * mb]) for i in range(self.num_micro_batches)]

    def next_global_batch_micro_batches(self) -> List[Dict[str, torch.Tensor]]:
        micro_batches = self.micro_batches_at(self.consumed_samples)
        self.consumed_samples += self.global_batch_size
        return micro_batches

    def __iter__(self):
        return self

    def __next__(self) -> List[Dict[str, torch.Tensor]]:
        return self.next_global_batch_micro_batches()

    def held_out_batch(self, batches: int = 1) -> List[Dict[str, torch.Tensor]]:
        """This rank's micro-batches of global batches 0..batches-1, in order: fixed across steps
        and resumes. Refused when they would read a sample of the split twice (a shard past its
        first epoch): a loss averaged over repeats weighs those samples double while saying it
        covers more data. DECISION: batch 0 alone is exempt, as it always was: one batch is
        what every run with a small validation split has used, and it says nothing more."""
        size = self.global_batch_size
        repeat = self.stream.first_repeat(batches * size) if batches > 1 else None
        if repeat is not None:
            raise DataConfigError(
                f"eval.batches={batches} asks for {batches * size} {self.split} samples "
                f"(x train.global_batch_size={size}), but the {self.split} data hold {repeat} "
                f"before a sample repeats; use eval.batches={max(1, repeat // size)} or less, or "
                f"more validation data (data.valid_blend)")
        return [micro_batch for batch in range(batches)
                for micro_batch in self.micro_batches_at(batch * size)]

    def state_dict(self) -> Dict:
        return {"consumed_samples": self.consumed_samples, "fingerprint": self.fingerprint,
                "fingerprint_detail": dict(self.fingerprint_detail)}

    def load_state_dict(self, state: Dict) -> None:
        consumed = state.get("consumed_samples") if isinstance(state, dict) else None
        if not isinstance(consumed, numbers.Integral) or isinstance(consumed, bool) or consumed < 0:
            raise DataError(
                f"the checkpoint's {self.split} data-loader state is damaged (consumed_samples="
                f"{consumed!r}, state {str(state)[:200]}): it cannot say where the data stopped. "
                f"Resume from an earlier checkpoint (checkpoint.resume=<its iter_ folder>)")
        if state.get("fingerprint") != self.fingerprint:
            old = state.get("fingerprint_detail")
            old = old if isinstance(old, dict) else {}
            changed = [f"{key}: {old.get(key)!r} -> {value!r} ({FINGERPRINT_FIELDS.get(key, key)})"
                       for key, value in self.fingerprint_detail.items() if old.get(key) != value]
            message = (
                f"the {self.split} data differ from the checkpoint's: "
                f"{'; '.join(changed) or 'the fingerprint (no details saved)'}. The resumed run "
                f"would not see the samples it would have seen. Restore the data (same files, "
                f"tokenizer, train.seed, train.seq_length, data.fim_*), or pass "
                f"data.allow_fingerprint_change=true to continue at consumed_samples={consumed} in "
                f"the new data's order")
            if not self.allow_fingerprint_change:
                raise FingerprintMismatch(message)
            logger.warning("data.allow_fingerprint_change=true: %s", message)
        self.consumed_samples = int(consumed)


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:32]


def build_loader(cfg: DataConfig, prepared, split: str, seq_length: int, global_batch_size: int,
                 micro_batch_size: int, dp_rank: int, dp_size: int, seed: int) -> CodeLoader:
    """A loader over `prepared` (data/prepare.py: PreparedData) for split "train" or "valid"."""
    if split not in ("train", "valid"):
        raise ValueError(f"split must be 'train' or 'valid', not {split!r}")
    tokenizer = CodeTokenizer(prepared.tokenizer_model)
    blend = prepared.train_blend if split == "train" else prepared.valid_blend
    if not blend:
        raise DataConfigError(f"no {split} data: set data.{'blend' if split == 'train' else 'valid_blend'}")
    stream = BlendedStream([(float(w), str(p)) for w, p in blend], seed, seq_length, split, tokenizer)
    return CodeLoader(stream, tokenizer, split, seq_length, global_batch_size, micro_batch_size,
                      dp_rank, dp_size, seed, fim_rate=cfg.fim_rate, fim_spm_rate=cfg.fim_spm_rate,
                      allow_fingerprint_change=cfg.allow_fingerprint_change)
