"""Safetensors shards in and out, never pickle.

    writer = ShardWriter(folder, max_shard_bytes)   # add(name, tensor) ...; finish() -> index
    reader = SafetensorsReader(hf_dir)              # .names(), .shape(name), .dtype(name), .get(name)

Writing streams: tensors are buffered until the next one would overflow the shard, then that shard
is written straight from the tensors' memory (`write_safetensors`, no serialized copy) and
dropped, so at most one shard of converted tensors is in memory beyond what the caller holds. Shards are named model-0000i-of-0000N.safetensors (renamed once N is known) and
listed in model.safetensors.index.json (weight_map + metadata.total_size), the layout
transformers, vLLM and SGLang read.

Reading never unpickles: an HF directory with only *.bin/*.pt weights is refused (those are
pickles: code runs on load). The index must be one (a JSON object with a weight_map of strings),
every shard it names must lie inside the directory (`file_in`), and every shard's header is checked
in full against the file's size (handoff/safetensors_header.py) before safetensors opens it lazily
(memory-mapped, one tensor at a time); safetensors' own read errors become the file's error.
"""

from __future__ import annotations

import json
import os
import re
import struct
from typing import Dict, Iterable, List, Optional

import torch
from safetensors import SafetensorError, safe_open

from handoff.published_config import PublishedFormatError
from handoff.safetensors_header import read_header

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(I?)B?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'5GB' -> 5 * 10**9 bytes (transformers' convention: decimal units; '5GiB' is binary)."""
    match = _SIZE.match(str(text))
    if not match:
        raise ValueError(f"--max-shard-size {text!r}; write it like 5GB, 500MB or 2GiB")
    number, unit, binary = float(match.group(1)), match.group(2).upper(), match.group(3)
    return int(number * (1024 if binary else 1000) ** " KMGT".index(unit or " "))


class ShardWriter:
    def __init__(self, folder: str, max_shard_bytes: int):
        if max_shard_bytes <= 0:
            raise ValueError(f"max shard size {max_shard_bytes} bytes; it must be positive")
        self.folder, self.max_shard_bytes = folder, max_shard_bytes
        self.buffer: Dict[str, torch.Tensor] = {}
        self.buffered_bytes = 0
        self.shards: List[List[str]] = []  # tensor names per written shard
        self.total_size = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.buffer and self.buffered_bytes + size > self.max_shard_bytes:
            self._flush()
        self.buffer[name] = tensor.contiguous()
        self.buffered_bytes += size
        self.total_size += size

    def _flush(self) -> None:
        path = os.path.join(self.folder, f".shard-{len(self.shards):05d}.safetensors")
        write_safetensors(path, self.buffer, {"format": "pt"})
        self.shards.append(list(self.buffer))
        self.buffer, self.buffered_bytes = {}, 0

    def finish(self) -> dict:
        """Write the last shard, give the shards their final names, write the index; returns it."""
        if self.buffer:
            self._flush()
        count, weight_map = len(self.shards), {}
        for number, names in enumerate(self.shards):
            final = f"model-{number + 1:05d}-of-{count:05d}.safetensors"
            os.replace(os.path.join(self.folder, f".shard-{number:05d}.safetensors"),
                       os.path.join(self.folder, final))
            weight_map.update({name: final for name in names})
        index = {"metadata": {"total_size": self.total_size}, "weight_map": weight_map}
        with open(os.path.join(self.folder, INDEX_FILE), "w") as stream:
            json.dump(index, stream, indent=2)
        return index


_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16",
           torch.int64: "I64", torch.int32: "I32", torch.uint8: "U8", torch.bool: "BOOL"}


def write_safetensors(path: str, tensors: Dict[str, torch.Tensor], metadata: dict) -> None:
    """The safetensors format written tensor by tensor from the tensors' own memory: 8-byte
    little-endian header length, the JSON header (dtype, shape, byte offsets; padded to 8 bytes),
    then the raw bytes in header order. safetensors' save_file would first build a bytes copy of
    every tensor of the shard, doubling the shard in memory."""
    header, offset = {"__metadata__": metadata}, 0
    for name, tensor in tensors.items():
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": _DTYPES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as stream:
        stream.write(struct.pack("<Q", len(encoded)))
        stream.write(encoded)
        for tensor in tensors.values():
            if tensor.numel():
                stream.write(memoryview(tensor.contiguous().view(-1).view(torch.uint8).numpy()))


def file_in(folder: str, name: str, named_by: Optional[str] = None) -> str:
    """The path of `name` (as the file `named_by` names it) inside `folder`, refusing one that lies
    outside: an absolute name, a `..`, or a symlink whose target is elsewhere (a directory from
    the internet must not make us read, and then train on or export, any other file). The one
    symlink layout allowed out is the Hugging Face hub cache's: snapshots/<rev>/<file> pointing
    into that model's ../../blobs/."""
    if "\x00" in name:
        raise PublishedFormatError(f"{named_by or folder} names {name!r}, which holds a NUL byte: "
                                   "no file has that name; copy the directory again")
    parts = name.replace("\\", "/").split("/")
    path = os.path.join(folder, name)
    real_folder = os.path.realpath(folder)
    real = os.path.realpath(path)
    blobs = os.path.join(os.path.dirname(os.path.dirname(real_folder)), "blobs")
    inside = real.startswith(real_folder + os.sep) or (
        os.path.basename(os.path.dirname(real_folder)) == "snapshots"
        and real.startswith(blobs + os.sep))
    if os.path.isabs(name) or ".." in parts or not inside:
        what = f"{named_by} names {name!r}, which" if named_by else path
        raise PublishedFormatError(
            f"{what} resolves to {real}, outside {real_folder}; "
            "loopcoder reads only the directory's own files: put the file itself into the "
            "directory and name it relative to it (no absolute path, no '..', no symlink out)")
    return path


class SafetensorsReader:
    """The tensors of an HF directory, by name, read lazily from its safetensors shards. Every
    shard lies inside the directory and has a consistent header (handoff/safetensors_header.py)
    before safetensors opens it; a tensor in two shards is refused."""

    def __init__(self, folder: str):
        self.folder = folder
        self._where: Dict[str, str] = {}
        self._entries: Dict[str, tuple] = {}
        self._handles = {}
        for name, named_by in self._shard_files():
            path = file_in(folder, name, named_by)
            if not os.path.isfile(path):
                raise PublishedFormatError(f"{named_by or folder} names {name}, which is missing; "
                                           "copy the whole directory")
            entries = read_header(path)
            self._handles[name] = self._guarded(path, lambda: safe_open(path, framework="pt"))
            for key, entry in entries.items():
                if key in self._where:
                    raise PublishedFormatError(
                        f"{path}: tensor {key} is also in {self.file_of(key)}; a tensor lives in "
                        "one shard: copy the directory again from its source")
                self._where[key], self._entries[key] = name, entry

    def _shard_files(self) -> List[tuple]:
        """[(shard file name, what names it)]."""
        index = os.path.join(self.folder, INDEX_FILE)
        if os.path.isfile(index):
            files = sorted(set(read_weight_map(file_in(self.folder, INDEX_FILE))
                               .values()))
            pickles = [f for f in files if not f.endswith(".safetensors")]
            if pickles:
                raise PublishedFormatError(f"{index} names {pickles[0]}, not a .safetensors file; "
                                           "loopcoder reads safetensors only (never pickles)")
            return [(name, index) for name in files]
        if os.path.isfile(os.path.join(self.folder, SINGLE_FILE)):
            return [(SINGLE_FILE, None)]
        present = sorted(os.listdir(self.folder)) if os.path.isdir(self.folder) else []
        pickles = [f for f in present if f.endswith(PICKLE_SUFFIXES)]
        if pickles:
            raise PublishedFormatError(
                f"{os.path.join(self.folder, pickles[0])} is a pickle file and {self.folder} has no "
                "safetensors weights; loopcoder never unpickles weights (loading a pickle runs "
                "code): save the model with safetensors (save_pretrained(..., "
                "safe_serialization=True)) and pass that directory")
        raise PublishedFormatError(f"{self.folder} has no {INDEX_FILE} and no {SINGLE_FILE}; pass "
                                   "a Hugging Face model directory with safetensors weights")

    @staticmethod
    def _guarded(path: str, read):
        """safetensors' own errors (a file changed under us, an I/O error) as the file's error."""
        try:
            return read()
        except (OSError, RuntimeError, ValueError, SafetensorError) as error:
            raise PublishedFormatError(f"{path} cannot be read as safetensors ({error}); copy "
                                       "the file again from its source") from error

    def names(self) -> Iterable[str]:
        return self._where.keys()

    def shape(self, name: str) -> tuple:
        return self._entries[name][1]

    def dtype(self, name: str) -> str:
        """safetensors' dtype string (F32, BF16, I64, ...)."""
        return self._entries[name][0]

    def get(self, name: str) -> torch.Tensor:
        return self._guarded(self.file_of(name),
                             lambda: self._handles[self._where[name]].get_tensor(name))

    def file_of(self, name: str) -> Optional[str]:
        where = self._where.get(name)
        return None if where is None else os.path.join(self.folder, where)


def read_weight_map(index_path: str) -> Dict[str, str]:
    """The index's weight_map ({tensor name: shard file}), refusing an index that is not one."""
    try:
        with open(index_path, encoding="utf-8") as stream:
            index = json.load(stream)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise PublishedFormatError(f"{index_path} is not JSON ({error}); copy it again from its "
                                   "source, or delete it if the directory has one "
                                   f"{SINGLE_FILE}") from error
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not (isinstance(weight_map, dict) and weight_map and all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items())):
        raise PublishedFormatError(
            f"{index_path} is not a safetensors index: it must be a JSON object whose "
            "\"weight_map\" maps each tensor name to its shard's file name (it holds "
            f"{_shown(index)}); copy it again from its source")
    return weight_map


def _shown(index) -> str:
    """What an index that is not one holds instead (for its error message)."""
    if not isinstance(index, dict):
        return f"a JSON {type(index).__name__}"
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        return f"the keys {sorted(index)[:5]}, no weight_map object with entries"
    bad = next(k for k, v in weight_map.items() if not isinstance(v, str))
    return f"{bad!r}: {weight_map[bad]!r}"
