"""A safetensors file's header, checked in full before any library opens the file.

    entries = read_header(path)     {tensor name: (dtype string, shape tuple)}

The format: an 8-byte little-endian header length N, N bytes of JSON (an object: tensor name ->
{"dtype", "shape", "data_offsets": [begin, end]}, plus an optional "__metadata__" of strings), then
the tensors' bytes, offsets counted from the end of the header. Everything a damaged or hostile
file can get wrong is refused here with a PublishedFormatError naming the file: a pickle under the
name (never unpickled), a length past the end of the file, a header that is not JSON or not an
object, an unknown dtype, a shape or offsets of the wrong type, a tensor whose byte range does not
match its shape, ranges that overlap or leave gaps, and a file shorter than its header claims
(truncated in a copy). safetensors then opens only files whose every tensor lies inside them.
"""

from __future__ import annotations

import json
import math
import os
import struct
from typing import Dict, Tuple

from handoff.published_config import PublishedFormatError

# Bytes per element of every dtype safetensors writes (sub-byte F4/F6 are not weights we read).
DTYPE_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2,
               "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8,
               "F64": 8, "C64": 8}
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit
_FIX = "copy the file again from its source (or re-export it)"


def _fail(path: str, problem: str, fix: str = _FIX):
    raise PublishedFormatError(f"{path} is not a valid safetensors file: {problem}; {fix}")


def _not_safetensors(path: str):
    raise PublishedFormatError(
        f"{path} is not a safetensors file (no safetensors header; a pickle or torch.save "
        "file?); loopcoder never unpickles weights: convert it to safetensors where it was "
        "made (e.g. model.save_pretrained(dir, safe_serialization=True))")


def _header_json(path: str) -> Tuple[dict, int]:
    """(the parsed header object, bytes of tensor data the file holds after it)."""
    size = os.path.getsize(path)
    with open(path, "rb") as stream:
        head = stream.read(9)
        if len(head) < 9:
            _fail(path, f"{size} bytes, shorter than a safetensors header")
        length = struct.unpack("<Q", head[:8])[0]
        if head[8:9] != b"{":
            _not_safetensors(path)
        if length < 2 or length > min(size - 8, MAX_HEADER_BYTES):
            _fail(path, f"its header claims {length} bytes but the file holds {size} "
                        "(truncated, or not a safetensors file)")
        stream.seek(8)
        raw = stream.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        _fail(path, f"its header is not JSON ({error})")
    if not isinstance(header, dict):
        _fail(path, f"its header is JSON of type {type(header).__name__}, not an object")
    return header, size - 8 - length


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _entry(path: str, name: str, entry) -> Tuple[str, tuple, int, int]:
    if not isinstance(entry, dict):
        _fail(path, f"tensor {name!r} is described by {entry!r}, not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_SIZES:
        _fail(path, f"tensor {name!r} has dtype {dtype!r}, which is not a safetensors dtype "
                    f"({', '.join(DTYPE_SIZES)})")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        _fail(path, f"tensor {name!r} has shape {shape!r}; a shape is a list of sizes >= 0")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))
            and offsets[0] <= offsets[1]):
        _fail(path, f"tensor {name!r} has data_offsets {offsets!r}; they are [begin, end] "
                    "with 0 <= begin <= end")
    nbytes = math.prod(shape) * DTYPE_SIZES[dtype]
    if offsets[1] - offsets[0] != nbytes:
        _fail(path, f"tensor {name!r} ({dtype} {shape}) needs {nbytes} bytes but its data_offsets "
                    f"{offsets} span {offsets[1] - offsets[0]}")
    return dtype, tuple(shape), offsets[0], offsets[1]


def read_header(path: str) -> Dict[str, Tuple[str, tuple]]:
    """{name: (dtype, shape)} of a safetensors file whose header is consistent with its bytes."""
    header, data_bytes = _header_json(path)
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        _fail(path, f"its __metadata__ {metadata!r} is not an object of strings")
    entries = {name: _entry(path, name, entry) for name, entry in header.items()}
    end = 0
    for name, (_, _, begin, stop) in sorted(entries.items(), key=lambda item: item[1][2:]):
        if begin != end:
            _fail(path, f"tensor {name!r} starts at byte {begin} of the data, where the previous "
                        f"tensor ends at {end}: the tensors' byte ranges overlap or leave a gap")
        end = stop
    if end > data_bytes:
        _fail(path, f"its header places tensors up to byte {end} of the data but the file holds "
                    f"only {data_bytes} after the header: it is truncated")
    if end < data_bytes:
        _fail(path, f"{data_bytes - end} bytes after the last tensor belong to none")
    return {name: (dtype, shape) for name, (dtype, shape, _, _) in entries.items()}
