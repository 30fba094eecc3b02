"""The one checkpoint frame every engine goes through: write, verify, publish, retain.

    checkpointer = Checkpointer(cfg.checkpoint, engine, loader, config_yaml, model_fields,
                                tokenizer_model, run_dir)
    checkpointer.acquire()               # this run holds checkpoint.dir (pretrain/checkpoint/lock.py)
    checkpointer.begin(resumed_folder)   # later checkpoints of another branch set aside
    checkpointer.save(step)              # every rank; returns the iter_ folder
    checkpointer.finalize(blocking)      # publish async saves whose writers finished
    checkpointer.close()                 # release the folder

A save writes `.tmp_iter_XXXXXXX/` on every rank: the engine's payload (its model and optimizer
files, pretrain/engines/), each rank's RNG states, and on rank 0 the trainer's state
(loopcoder.json) and the run's config.yaml. Every failure is decided by all ranks together (no rank
raises while the others wait in a barrier) and removes the half-written folder. Publishing, after
every rank's writer finished: rank 0 checks that the payload is whole (the engine format's own
check), the ranks checksum and fsync every file (pretrain/checkpoint/integrity.py: checksums.json),
the folder is renamed to `iter_XXXXXXX/` (stage and publish: pretrain/checkpoint/destination.py),
then `latest` is replaced atomically, then retention keeps the newest `checkpoint.keep`. A crash
or a second signal at any moment leaves the previous checkpoint and `latest` intact. With checkpoint.async_save the engine's
writers run in the background (megatron-core's async dist_checkpointing); publishing happens in
`finalize` once every rank's writer is done.
"""

from __future__ import annotations

import logging
import os
import shutil

import torch

import pretrain.checkpoint.files as files
from pretrain.collective import collectively, on_main
from pretrain.checkpoint.destination import publish, stage, unstage
from pretrain.checkpoint.integrity import seal
from pretrain.checkpoint.lineage import set_aside_later_branch
from pretrain.checkpoint.lock import FolderLock
from pretrain.checkpoint.payload import verify_folder
from pretrain.checkpoint.state import save_rng, trainer_state
from pretrain.distributed import barrier, is_main, rank
from pretrain.errors import CheckpointError

logger = logging.getLogger(__name__)


def discard(tmp: str) -> None:
    """Remove a half-written folder (rank 0, after every rank stopped writing into it)."""
    barrier()
    if is_main():
        unstage(tmp)
    barrier()


class Checkpointer:
    def __init__(self, cfg, engine, loader, config_yaml: str, model_fields: dict,
                 tokenizer_model: str, run_dir: str):
        self.root, self.keep, self.async_save = cfg.dir, cfg.keep, cfg.async_save
        self.verify = cfg.verify
        self.saves_planned = cfg.interval > 0 or cfg.save_final
        self.engine, self.loader = engine, loader
        self.config_yaml, self.model_fields = config_yaml, model_fields
        self.tokenizer_model = tokenizer_model
        self._lock = FolderLock(self.root, run_dir)
        # megatron-core's AsyncCallsQueue, once an async save was scheduled. At most one save is
        # in flight: a new save, and the end of training, first wait for the previous one.
        self._async_queue = None

    # -- the folder ---------------------------------------------------------------------------
    def acquire(self) -> None:
        """Hold checkpoint.dir for this run (rank 0 takes the lock; every rank gets its refusal)."""
        on_main("cannot start", lambda: self._lock.acquire())

    def begin(self, resumed: str = None) -> None:
        """Before the first step: set aside the checkpoints past this run's start (another branch)
        and half-written folders of dead runs. Every rank, after acquire()."""
        from pretrain.checkpoint.resume import verify_resumable

        # Verified (and a weights-only checkpoint refused) before anything in the folder moves;
        # load_checkpoint's own check then finds it verified (integrity.py) and hashes nothing.
        start = verify_resumable(resumed, self.verify)["step"] if resumed else 0
        on_main(f"cannot prepare {self.root}",
                lambda: (set_aside_later_branch(self.root, start, resumed), self._clear_stale()))
        if self.saves_planned:  # else a stop signal's save starts what it needs itself
            self.engine.prepare_saving()

    def close(self) -> None:
        self._lock.release()

    def _clear_stale(self) -> None:
        """Half-written folders of earlier runs (killed mid-save): this run holds the folder, so
        no save of another live run is in flight."""
        if os.path.isdir(self.root):
            for stale in os.listdir(self.root):
                if stale.startswith(".tmp_iter_"):
                    shutil.rmtree(os.path.join(self.root, stale), ignore_errors=True)

    # -- save ---------------------------------------------------------------------------------
    def save(self, step: int) -> str:
        """Write iter_<step>/ on every rank and publish it (now, or in finalize when async)."""
        self.finalize(blocking=True)
        name = files.iter_name(step)
        final, tmp = os.path.join(self.root, name), os.path.join(self.root, files.tmp_name(step))
        collectively(f"cannot create {tmp}", lambda: self._prepare(final, step))
        world_size = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        state = trainer_state(step, self.loader, self.engine, self.model_fields, world_size)
        request = None

        def write():
            nonlocal request
            request = self.engine.save_payload(tmp, async_save=self.async_save)
            save_rng(files.rng_file(tmp, rank()))
            if is_main():
                self._write_frame_files(tmp, state)

        try:
            collectively(f"cannot write checkpoint {name} into {tmp}", write)
        except CheckpointError:
            discard(tmp)
            raise
        if request is None:  # synchronous: every rank's payload is written
            self._publish(name, tmp, state)
            return final
        request.add_finalize_fn(lambda: self._publish(name, tmp, state))
        if self._async_queue is None:
            from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue
            self._async_queue = AsyncCallsQueue()
        self._async_queue.schedule_async_request(request)
        return final

    def _prepare(self, final: str, step: int) -> None:
        if is_main():
            os.makedirs(self.root, exist_ok=True)
            self._clear_stale()
            stage(final, tmp_name=files.tmp_name(step), replace=True)

    def _write_frame_files(self, tmp: str, state: dict) -> None:
        import json

        files.write_durably(os.path.join(tmp, files.STATE_FILE),
                            lambda stream: json.dump(state, stream, indent=1))
        files.write_durably(os.path.join(tmp, files.CONFIG_FILE),
                            lambda stream: stream.write(self.config_yaml))
        with open(self.tokenizer_model, "rb") as source:
            files.write_durably(os.path.join(tmp, files.TOKENIZER_FILE),
                                lambda stream: shutil.copyfileobj(source, stream), binary=True)

    def finalize(self, blocking: bool) -> None:
        """Publish the async saves whose writers are done on every rank. Call on every rank at
        the same points (each step, blocking at the end); without a save in flight it does
        nothing and communicates nothing."""
        queue = self._async_queue
        if queue is not None and queue.get_num_unfinalized_calls():
            try:
                queue.maybe_finalize_async_calls(blocking=blocking)
            except (CheckpointError, KeyboardInterrupt, SystemExit):
                raise
            except BaseException as error:  # megatron raises the writers' errors on every rank
                raise CheckpointError(f"async checkpoint save failed: {error}") from error

    # -- publish ------------------------------------------------------------------------------
    def _publish(self, name: str, tmp: str, state: dict) -> None:
        """Verify the written folder, make it durable, rename it into place, move `latest`,
        apply retention. Collective: every rank, after every rank's writer finished."""
        barrier()
        try:
            collectively(f"checkpoint {name} failed verification",
                         lambda: verify_folder(tmp, state) if is_main() else None)
            seal(tmp)
        except CheckpointError:
            discard(tmp)
            raise
        collectively(f"cannot move checkpoint {name} into place", lambda: self._rename(name, tmp))
        if is_main():
            logger.info("checkpoint %s complete", os.path.join(self.root, name))

    def _rename(self, name: str, tmp: str) -> None:
        if is_main():
            publish(tmp, os.path.join(self.root, name), replace=True)
            files.write_latest(self.root, name)
            self._apply_retention(protect=name)

    def _apply_retention(self, protect: str) -> None:
        if self.keep <= 0:
            return
        for name in files.list_checkpoints(self.root)[:-self.keep]:
            if name != protect:
                shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)
