"""What the checkpoint checksums cost: a save and a load of plt_125m, with and without them.

    OMP_NUM_THREADS=1 python -m bench.bench_checksums [--preset plt_125m] [--repeats 3]

One process, the megatron engine (fp32 model and Adam state, as on CPU), the trainer's Checkpointer
(pretrain/checkpoint/checkpointer.py, resume.py). Side by side, in turn, `repeats` times each (median):
- save: the Checkpointer's save with sealing (checksums of every file + fsync) and with sealing skipped;
- load: load_checkpoint with checkpoint.verify=full, =headers, and with the checksum check skipped.
The "skipped" variants replace the one function (integrity.seal / integrity.verify) with a no-op in
this process only; everything else is the real code path. Files are in the page cache when they are
hashed (the save just wrote them; the loads read them repeatedly): the figures are the hashing's
CPU cost, not a cold disk read.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time


class _Loader:
    """The data loader's checkpoint face (consumed_samples, state_dict): no data needed here."""

    consumed_samples = 0

    def state_dict(self):
        return {"consumed_samples": 0, "fingerprint": "bench"}

    def load_state_dict(self, state):
        pass


def _engine(preset: str):
    from omegaconf import OmegaConf

    from pretrain.config import compose, validate
    from pretrain.distributed import single_process_world
    from pretrain.engines.megatron import MegatronEngine

    cfg = OmegaConf.to_object(compose([f"model={preset}", "run_dir=/tmp/unused",
                                       "train.precision=fp32", "train.global_batch_size=1",
                                       "train.micro_batch_size=1"]))
    import torch

    layout = validate(cfg, world_size=1)
    single_process_world()
    engine = MegatronEngine(cfg, torch.device("cpu"), layout)
    # One optimizer step, so that the checkpoint holds Adam's state as a trainer's does.
    seq, vocab = 64, cfg.model.vocab_size
    tokens = torch.randint(0, vocab, (cfg.train.micro_batch_size or 1, seq + 1))
    cfg.train.micro_batch_size, cfg.train.seq_length = tokens.shape[0], seq
    engine.train_step([{"tokens": tokens[:, :-1], "labels": tokens[:, 1:],
                        "loss_mask": torch.ones(tokens.shape[0], seq),
                        "position_ids": torch.arange(seq).expand(tokens.shape[0], -1)}])
    return cfg, engine


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="plt_125m")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    import pretrain.checkpoint.checkpointer as checkpointer_module
    import pretrain.checkpoint.resume as resume
    import pretrain.checkpoint.integrity as integrity
    from pretrain.checkpoint import Checkpointer, load_checkpoint, model_fields_of
    from pretrain.config import CheckpointConfig

    cfg, engine = _engine(args.preset)
    work = tempfile.mkdtemp(prefix="bench-checksums-")
    tokenizer = os.path.join(work, "tokenizer.model")
    with open(tokenizer, "wb") as stream:
        stream.write(b"\0" * 1024)
    fields = model_fields_of(cfg.model)
    times = {name: [] for name in ("save sealed", "save unsealed", "load verify=full",
                                   "load verify=headers", "load unverified")}
    real_seal, real_verify = checkpointer_module.seal, resume.verify_checksums
    try:
        for repeat in range(args.repeats):
            for sealed in (True, False):
                root = os.path.join(work, f"ckpt_{repeat}_{sealed}")
                ckpt = CheckpointConfig(dir=root, keep=0, async_save=False)
                checkpointer = Checkpointer(ckpt, engine, _Loader(), model_fields=fields,
                                            config_yaml="model: {}\n", tokenizer_model=tokenizer,
                                            run_dir=work)
                checkpointer_module.seal = real_seal if sealed else (lambda folder: None)
                name = "save sealed" if sealed else "save unsealed"
                times[name].append(_timed(lambda: checkpointer.save_now(1)))
            checkpointer_module.seal = real_seal
            folder = os.path.join(work, f"ckpt_{repeat}_True", "iter_0000001")
            for mode in ("full", "headers", None):
                resume.verify_checksums = real_verify if mode else (lambda *a, **k: True)
                integrity._VERIFIED.clear()  # each load hashes again (a process checks once)
                name = f"load verify={mode}" if mode else "load unverified"
                times[name].append(_timed(lambda: load_checkpoint(
                    folder, engine, _Loader(), fields, verify=mode or "full")))
            resume.verify_checksums = real_verify
            shutil.rmtree(os.path.join(work, f"ckpt_{repeat}_False"))
        size = sum(os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk(folder)
                   for n in names)
        params = sum(p.numel() for p in engine.inference_model.parameters())
        print(f"{args.preset}: {params / 1e6:.1f}M parameters, checkpoint {size / 2**20:.0f} MiB "
              f"(fp32 weights + Adam), median of {args.repeats}, 1 process")
        base_save = statistics.median(times["save unsealed"])
        base_load = statistics.median(times["load unverified"])
        for name, values in times.items():
            median = statistics.median(values)
            base = base_save if name.startswith("save") else base_load
            print(f"  {name:<22} {median:7.2f} s   {median / base:5.2f}x   "
                  f"+{median - base:5.2f} s   ({size / 2**20 / max(median - base, 1e-9):,.0f} "
                  f"MiB/s of checksums)" if median > base else
                  f"  {name:<22} {median:7.2f} s   {median / base:5.2f}x")
    finally:
        checkpointer_module.seal, resume.verify_checksums = real_seal, real_verify
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
