"""Checksums of every file of a checkpoint: written by the Checkpointer when it publishes one, checked
before anything reads it (resume, generate, convert, export).

    checksums.json   {"algorithm": "sha256", "head_bytes": 1048576,
                      "files": {"<relative path>": {"size": n, "sha256": "...", "head_sha256": "..."}}}

Verification modes (checkpoint.verify): `full` reads every byte (sha256 runs at about 2 GB/s per core
with the SHA extensions of current x86 CPUs; bench/bench_checkpoint.py --checksums measures it on
plt_125m), `headers` checks every file's size and the checksum of its first MiB (for checkpoints so
large that a full read per resume matters; a flipped byte past the first MiB then goes unseen).

Both writing and checking are spread over the ranks: the files are dealt out by size, each rank
hashes (and, when writing, fsyncs) its share, rank 0 gathers the results. A checkpoint written
before checkpoints carried checksums is checked for completeness only, with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from typing import Dict, List

import pretrain.checkpoint.files as files
from pretrain.collective import on_each_rank, on_main
from pretrain.distributed import rank
from pretrain.errors import CheckpointError

logger = logging.getLogger(__name__)

CHECKSUMS_FILE = "checksums.json"
HEAD_BYTES = 1 << 20
CHUNK = 16 << 20
VERIFY_MODES = ("full", "headers")
_HEX = re.compile("[0-9a-f]{64}")


def _listing(folder: str) -> List[str]:
    """Every file of the checkpoint but checksums.json, and every symbolic link to a folder (which
    os.walk does not enter: such a link is listed, so it is never passed over unchecked)."""
    found = []
    for directory, folders, names in os.walk(folder):
        links = [name for name in folders if os.path.islink(os.path.join(directory, name))]
        for name in names + links:
            relative = os.path.relpath(os.path.join(directory, name), folder)
            if relative != CHECKSUMS_FILE:
                found.append(relative)
    return sorted(found)


def refuse_links(folder: str) -> None:
    """loopcoder writes no symbolic link into a checkpoint: one there (to a file or a folder,
    `rng -> /elsewhere`) would be read, or copied by convert, from outside what was sealed."""
    links = [name for name in _listing(folder) + [CHECKSUMS_FILE]
             if os.path.islink(os.path.join(folder, name))]
    if links:
        raise CheckpointError(f"{folder} holds symbolic links ({', '.join(links)}); a checkpoint "
                              "holds its own files only: replace each link by the file or folder "
                              "it points to, or resume from another checkpoint")


def _share(paths: List[str], sizes: Dict[str, int]) -> List[str]:
    """This rank's share: the files dealt largest first to the least loaded rank."""
    import torch

    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    load, mine = [0] * world, []
    for path in sorted(paths, key=lambda p: (-sizes[p], p)):
        owner = load.index(min(load))
        load[owner] += sizes[path]
        if owner == rank():
            mine.append(path)
    return mine


def file_digest(path: str, head_only: bool = False, sync: bool = False) -> dict:
    """size, sha256 of the first HEAD_BYTES and (unless head_only) of the whole file."""
    with open(path, "rb") as stream:
        first = stream.read(HEAD_BYTES)
        digest = {"size": os.fstat(stream.fileno()).st_size,
                  "head_sha256": hashlib.sha256(first).hexdigest()}
        if not head_only:
            whole = hashlib.sha256(first)
            while chunk := stream.read(CHUNK):
                whole.update(chunk)
            digest["sha256"] = whole.hexdigest()
        if sync:
            os.fsync(stream.fileno())
    return digest


def seal(folder: str) -> None:
    """Hash and fsync every file of the written folder (spread over the ranks), then write
    checksums.json on rank 0. Every rank, after every rank's writer finished."""
    sizes = on_main(f"cannot list {folder}",
                    lambda: {p: os.path.getsize(os.path.join(folder, p)) for p in _listing(folder)})
    digests = on_each_rank(f"cannot checksum {folder}", lambda: {
        p: file_digest(os.path.join(folder, p), sync=True) for p in _share(sorted(sizes), sizes)})

    def write():
        manifest = {"algorithm": "sha256", "head_bytes": HEAD_BYTES,
                    "files": {p: digests[p] for p in sorted(sizes)}}
        files.write_durably(os.path.join(folder, CHECKSUMS_FILE),
                            lambda stream: json.dump(manifest, stream, indent=1))

    on_main(f"cannot write {CHECKSUMS_FILE} into {folder}", write)


def read_manifest(folder: str):
    """The checkpoint's checksums, or None for a checkpoint written before they existed. Every
    entry is checked for its shape (a damaged checksums.json can parse as JSON) before use."""
    path = os.path.join(folder, CHECKSUMS_FILE)
    if not os.path.lexists(path):
        return None
    try:
        with open(path, "rb") as stream:
            manifest = json.loads(stream.read().decode("utf-8"))["files"]
        for relative, entry in manifest.items():
            if os.path.isabs(relative) or ".." in relative.split("/") or relative == CHECKSUMS_FILE:
                raise ValueError(f"it names {relative!r}, which is not a file of the checkpoint")
            if (not isinstance(entry, dict) or not isinstance(entry.get("size"), int)
                    or any(not isinstance(entry.get(key), str) or not _HEX.fullmatch(entry[key])
                           for key in ("sha256", "head_sha256"))):
                raise ValueError(f"its entry for {relative!r} is not a size and two sha256 digests")
        return manifest
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise CheckpointError(f"{path} is damaged and cannot be read ({error}); the checkpoint's "
                              f"files cannot be checked against it") from error


def mismatches(folder: str, manifest: dict, paths: List[str], mode: str) -> List[str]:
    """What is wrong with these files of `folder` against the manifest (one line each)."""
    wrong = []
    for relative in paths:
        path, expected = os.path.join(folder, relative), manifest[relative]
        if not os.path.isfile(path):
            wrong.append(f"{relative} is missing")
            continue
        size = os.path.getsize(path)
        if size != expected["size"]:
            wrong.append(f"{relative} has {size} bytes, its checksum was taken over {expected['size']}")
            continue
        got = file_digest(path, head_only=mode == "headers")
        key = "head_sha256" if mode == "headers" else "sha256"
        if got[key] != expected[key]:
            wrong.append(f"{relative} does not match its sha256 (the file changed after the "
                         f"checkpoint was written)")
    return wrong


# What this process verified already, so that a reader that checks a checkpoint before parsing
# any of it (the Checkpointer before it sets checkpoints aside, the tools before they read the
# config) and then loads it does not hash it twice: {real path: (mode, the files' sizes, mtimes, inodes)}.
_VERIFIED: Dict[str, tuple] = {}


def _signature(folder: str) -> tuple:
    found = []
    for relative in _listing(folder) + [CHECKSUMS_FILE]:
        status = os.stat(os.path.join(folder, relative))
        found.append((relative, status.st_size, status.st_mtime_ns, status.st_ino))
    return tuple(found)


def _verified_before(folder: str, mode: str) -> bool:
    seen = _VERIFIED.get(os.path.realpath(folder))
    return (seen is not None and seen[0] in ("full", mode)
            and seen[1] == _signature(folder))


def verify(folder: str, mode: str = "full", collective: bool = True) -> bool:
    """Raise CheckpointError naming every damaged file unless each matches its checksum; False
    (with a warning) for a checkpoint without checksums. collective: the ranks share the work (all
    must call); else this process checks everything. Reads nothing but checksums.json and the raw
    bytes: call it before any file of the checkpoint is parsed."""
    if mode not in VERIFY_MODES:
        raise CheckpointError(f"checkpoint.verify={mode!r}; use one of {VERIFY_MODES}")
    refuse_links(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        logger.warning("%s has no %s (written by an older loopcoder): only its completeness is "
                       "checked", folder, CHECKSUMS_FILE)
        return False
    seen = (on_main(f"cannot verify {folder}", lambda: _verified_before(folder, mode))
            if collective else _verified_before(folder, mode))
    if seen:
        return True
    paths = sorted(manifest)
    if collective:
        share = _share(paths, {p: manifest[p]["size"] for p in paths})
        found = on_each_rank(f"cannot verify {folder}",
                             lambda: {rank(): mismatches(folder, manifest, share, mode)})
    else:
        found = {0: mismatches(folder, manifest, paths, mode)}
    problems = sorted(line for part in found.values() for line in part)
    problems += [f"{name} is not in its {CHECKSUMS_FILE}"
                 for name in sorted(set(_listing(folder)) - set(manifest))]
    if problems:
        raise CheckpointError(f"{folder} is damaged: " + "; ".join(problems))
    _VERIFIED[os.path.realpath(folder)] = (mode, _signature(folder))
    return True
