"""A checkpoint without checksums.json (written before loopcoder sealed its checkpoints): every
file that can prove itself whole is checked before anything loads it, so that damage gives a
CheckpointError naming the file, never a parser's traceback.

- every `*.pt` file (common.pt, rng/rank_*.pt, DeepSpeed's files) is a torch.save zip archive whose
  every record carries a CRC-32: all records are read and their CRCs compared;
- every tensor of megatron's `*.distcp` shards is such an archive too, at the offset and length
  its `.metadata` gives (pretrain/engines/megatron_checkpoint.py: tensor_archives);
- `*.json` must parse as JSON, `config.yaml` as YAML, `tokenizer.model` as a sentencepiece model.

A flipped byte anywhere in a zip archive is found (CRC-32 detects every error of up to 32 bits);
one in a JSON or YAML value that still parses is not: only checksums.json can tell that.
"""

from __future__ import annotations

import io
import json
import os
import zipfile

from pretrain.errors import CheckpointError


class Window(io.RawIOBase):
    """The bytes [offset, offset + length) of an open binary file, as a seekable file of its own."""

    def __init__(self, stream, offset: int, length: int):
        super().__init__()
        self._stream, self._offset, self._length, self._position = stream, offset, length, 0

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, position: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._length}[whence]
        self._position = max(0, min(self._length, base + position))
        return self._position

    def readinto(self, buffer) -> int:
        count = min(len(buffer), self._length - self._position)
        self._stream.seek(self._offset + self._position)
        data = self._stream.read(count)
        buffer[:len(data)] = data
        self._position += len(data)
        return len(data)


def check_archive(stream, name: str) -> None:
    """Raise CheckpointError naming `name` unless `stream` is a zip archive whose records all
    match their CRC-32."""
    try:
        with zipfile.ZipFile(stream) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError,
            OverflowError, KeyError, NotImplementedError, RuntimeError) as error:
        bad, cause = name, error
    else:
        cause = f"record {bad} does not match its CRC-32"
    if bad is not None:
        raise CheckpointError(f"{name} is damaged and cannot be read ({cause})")


def _parse_text(path: str, relative: str) -> None:
    try:
        with open(path, "rb") as stream:
            text = stream.read().decode("utf-8")
        if relative.endswith(".json"):
            json.loads(text)
        elif relative.endswith((".yaml", ".yml")):
            import yaml
            yaml.safe_load(text)
    except Exception as error:  # noqa: BLE001 any parser failure is damage to this file
        raise CheckpointError(f"{path} is damaged and cannot be parsed "
                              f"({type(error).__name__}: {error})".split("\n")[0]) from None


def _parse_tokenizer(path: str) -> None:
    import sentencepiece

    try:
        sentencepiece.SentencePieceProcessor(model_file=path)
    except Exception as error:  # noqa: BLE001 sentencepiece raises RuntimeError/OSError alike
        raise CheckpointError(f"{path} is damaged: it is not a sentencepiece model "
                              f"({error})".split("\n")[0]) from None


def check_readable(folder: str) -> None:
    """Every file of `folder` that can be checked without its checksum (module docstring)."""
    for directory, _, names in os.walk(folder):
        for name in sorted(names):
            path = os.path.join(directory, name)
            relative = os.path.relpath(path, folder)
            if name.endswith(".pt"):
                with open(path, "rb") as stream:
                    check_archive(stream, path)
            elif name.endswith((".json", ".yaml", ".yml")):
                _parse_text(path, relative)
            elif name == "tokenizer.model":
                _parse_tokenizer(path)


def check_archives_within(folder: str, index: str, archives) -> None:
    """Each (file, offset, length) of `archives` (the payload's index file `index` places them) is
    a whole archive; without checksums either file may be the damaged one, so both are named."""
    opened = {}
    try:
        for relative, offset, length in archives:
            path = os.path.join(folder, relative)
            if relative not in opened:
                opened[relative] = open(path, "rb")
            try:
                check_archive(Window(opened[relative], offset, length), path)
            except CheckpointError as error:
                raise CheckpointError(
                    f"{error}: the tensor {index} places at bytes {offset}-{offset + length} of "
                    f"{relative} is not whole, so {relative} or {os.path.join(folder, index)} is "
                    f"damaged") from None
    finally:
        for stream in opened.values():
            stream.close()
