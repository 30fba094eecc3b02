"""A tool never destroys what it was given: where a tool that reads one folder and writes another
may write, checked before anything is written.

    refuse_overlap({"SRC": src}, dst, "DST")         # the same folder, or one inside the other
    with new_checkpoint_dir(dst, "DST"): ...         # empty or absent, one writer, no debris
    with nothing_left_on_failure(dst, "DST"): ...    # a failed write (a full disk) leaves nothing
    with staged(final, "--out") as tmp: ...          # written in a temp folder beside `final`,
                                                     # renamed into place only when whole

`staged` is the one "stage, then publish" of the project: the Checkpointer's save
(pretrain/checkpoint/checkpointer.py, through its halves `stage` / `publish` / `unstage`: an async
save publishes after its writers finish), the tools' checkpoints (import_hf, convert:
pretrain/checkpoint/weights.py `staged_checkpoint`) and the Hugging Face export (handoff/export.py).

Paths are compared as the file system resolves them (symlinks, `..`, relative paths): two spellings
of one folder are one folder. A checkpoint tool's output must not hold checkpoints or anything
else (`scripts.import_hf --out` a run's checkpoint.dir once moved its `latest` to the import, and
the resume that followed set the run's own checkpoints aside).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys

from model.config import ConfigError
from pretrain.checkpoint.files import fsync_dir, fsync_tree
from pretrain.checkpoint.lock import LOCK_FILE, FolderLock, one_writer

# What a destination may already hold: a killed earlier write's temp folders (ours to clear) and
# an idle run lock.
OWN_LEFTOVERS = (".tmp_iter_", LOCK_FILE)


def _real(path: str) -> str:
    return os.path.realpath(os.path.abspath(path))


def _within(inner: str, outer: str) -> bool:
    return inner == outer or os.path.commonpath([inner, outer]) == outer


def refuse_overlap(sources: dict, destination: str, flag: str) -> None:
    """ConfigError unless `destination` and each source ({how the user named it: path}) are apart:
    neither the same folder nor one inside the other."""
    target = _real(destination)
    for source_flag, path in sources.items():
        source = _real(path)
        if not (_within(target, source) or _within(source, target)):
            continue
        relation = ("is the same folder as" if target == source else
                    "lies inside" if _within(target, source) else "contains")
        raise ConfigError(
            f"{flag} {destination} {relation} {source_flag} {path} (as resolved: {target} and "
            f"{source}); a tool never writes where it reads, which would replace or mix its input. "
            f"Pass a {flag} outside {source}")


def refuse_used(destination: str, flag: str) -> None:
    """ConfigError unless `destination` is absent or empty (but for our own leftovers)."""
    if not os.path.lexists(destination):
        return
    if not os.path.isdir(destination):
        raise ConfigError(f"{flag} {destination} exists and is not a folder; pass a new folder")
    held = sorted(name for name in os.listdir(destination) if not name.startswith(OWN_LEFTOVERS))
    if not held:
        return
    checkpoints = [name for name in held if name.startswith("iter_") or name == "latest"]
    what = (f"holds checkpoints ({', '.join(checkpoints[:5])})" if checkpoints
            else f"is not empty ({', '.join(held[:5])}{', ...' if len(held) > 5 else ''})")
    raise ConfigError(
        f"{flag} {destination} {what}; writing there would move its `latest` and mix checkpoints "
        f"(a run resumed from it would set its own checkpoints aside). Pass a new or empty "
        f"folder; to train on from these weights in a run's folder, give them to the run as "
        f"checkpoint.init_from")


@contextlib.contextmanager
def new_checkpoint_dir(destination: str, flag: str):
    """Hold `destination` for this process (lock.one_writer, and the run lock a trainer takes on
    its checkpoint.dir), refuse it unless absent or empty, create it; on a failure inside the block, remove it again when this call created it (the
    block removes its own temp folders)."""
    with one_writer(destination, flag):
        refuse_used(destination, flag)
        created = not os.path.isdir(destination)
        # The run lock too: a trainer started on this folder meanwhile is refused, and refuses us.
        run_lock = FolderLock(destination, f"{flag} of {' '.join(sys.argv)[:300]}")
        try:
            run_lock.acquire()
            for name in os.listdir(destination):  # a killed write's debris: no writer is alive
                if name.startswith(".tmp_iter_"):
                    shutil.rmtree(os.path.join(destination, name), ignore_errors=True)
            yield
        except BaseException:
            run_lock.release()
            if created:
                shutil.rmtree(destination, ignore_errors=True)
            raise
        run_lock.release()


@contextlib.contextmanager
def nothing_left_on_failure(out: str, flag: str):
    """A tool's write of the output folder `out` (named by `flag`) leaves nothing behind when it
    fails: the folders of `out`'s path this call created are removed (the block removes its own
    temp folders); a full disk (pretrain.errors.disk_is_full, asked before the cleanup frees
    space) becomes a CheckpointError naming `out`, whatever the writer raised (megatron's says only
    "unexpected pos")."""
    from pretrain.errors import CheckpointError, disk_is_full

    created = None  # the topmost folder of out's path that does not exist yet
    path = os.path.abspath(out)
    while not os.path.lexists(path):
        created, path = path, os.path.dirname(path)
    try:
        yield
    except BaseException as error:  # noqa: BLE001 torch's CheckpointException is a BaseException
        full = not isinstance(error, (SystemExit, KeyboardInterrupt)) and disk_is_full(error, out)
        if created:
            shutil.rmtree(created, ignore_errors=True)
        if full:
            raise CheckpointError(
                f"cannot write {flag} {os.path.abspath(out)}: no space left on the device "
                f"(nothing was kept there); free space on that disk or pass a {flag} on "
                "another") from None
        raise


# -- stage, then publish ---------------------------------------------------------------------------
def _default_tmp_name(final: str, pid) -> str:
    return f".{os.path.basename(os.path.abspath(final))}.tmp{pid}"


def clear_stale_staging(final: str) -> None:
    """Remove the temp folders of `final` (default names) a killed writer left beside it. Call it
    only while holding `final` (lock.one_writer): no writer of those folders is alive then."""
    parent = os.path.dirname(os.path.abspath(final))
    stale = re.compile(re.escape(_default_tmp_name(final, "")) + "[0-9]+")
    for name in os.listdir(parent) if os.path.isdir(parent) else ():
        if stale.fullmatch(name):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def stage(final: str, flag: str = "--out", tmp_name: str = None, replace: bool = False) -> str:
    """A new, empty temp folder beside `final` to write it in: `tmp_name` (a checkpoint's
    `.tmp_iter_XXXXXXX`) or `.<name>.tmp<pid>`, a leftover of that name removed first. Unless
    `replace`, a `final` that exists and is not an empty folder is refused first (FileExistsError
    naming `flag`)."""
    final = os.path.abspath(final)
    if not replace and os.path.lexists(final) and (not os.path.isdir(final) or os.listdir(final)):
        raise FileExistsError(f"{final} exists and is not empty; pass another {flag} or remove it")
    parent = os.path.dirname(final)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, tmp_name or _default_tmp_name(final, os.getpid()))
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    return tmp


def unstage(tmp: str) -> None:
    """Remove a temp folder that will not be published (its write failed)."""
    shutil.rmtree(tmp, ignore_errors=True)


def publish(tmp: str, final: str, flag: str = "--out", replace: bool = False) -> str:
    """Make the written folder `tmp` durable (every file and folder fsync'ed: other writers,
    DeepSpeed's or megatron's, leave theirs in the page cache), rename it to `final` and fsync the
    parent, so that a published folder survives a power cut and a half-written one is never seen
    under `final`. With `replace`, a folder named `final` is replaced (a run resumed at a step
    saves that step again); else only an empty one, and a `final` filled meanwhile by a writer
    that took no lock is a FileExistsError naming `flag`. On any failure `tmp` is removed."""
    final = os.path.abspath(final)
    try:
        fsync_tree(tmp)
        if replace and os.path.isdir(final):
            shutil.rmtree(final)
        try:
            if not replace and os.path.isdir(final):
                os.rmdir(final)  # empty (checked in stage), unless filled meanwhile
            os.replace(tmp, final)
        except OSError as error:
            if replace:
                raise
            raise FileExistsError(f"{final} was filled by another writer while it was written "
                                  f"({error.strerror}); nothing was written, pass another "
                                  f"{flag}") from error
        fsync_dir(os.path.dirname(final))
    except BaseException:
        unstage(tmp)
        raise
    return final


@contextlib.contextmanager
def staged(final: str, flag: str = "--out", tmp_name: str = None, replace: bool = False):
    """Write `final` inside the block into the temp folder this yields (`stage`); on a failure
    the temp folder is removed, on success it is published as `final` (`publish`)."""
    tmp = stage(final, flag, tmp_name, replace)
    try:
        yield tmp
    except BaseException:
        unstage(tmp)
        raise
    publish(tmp, final, flag, replace)
