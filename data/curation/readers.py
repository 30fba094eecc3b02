"""Where documents come from: the inputs, and the work folder's intermediate files.

Every document leaves a reader as a datatrove `Document` with `text`, `id` and two metadata keys the
filters read, `path` and `language` (None when the input has no such column):

- a folder of source files (`SourceFolderReader`): one document per file, its path relative to the
  folder as id and path. Files that are not UTF-8 text (a NUL byte in the first 8 KiB, or invalid
  UTF-8) and files over the size limit are dropped while reading, with the reason in the stats.
  The text is decoded as written (no newline translation): the tokenizer round-trips it exactly.
- jsonl / parquet files (our readers, record by record) and Hugging Face datasets (datatrove's
  `HuggingFaceDatasetReader`, streaming): the `--text-key`, `--id-key`, `--path-key` and
  `--language-key` columns; other columns are not carried. Rows with empty text are counted as
  `empty`. A record that cannot be a document (a line that is not UTF-8 or not JSON, a text that
  is null, missing or not a string, a lone surrogate) is skipped by file and line (skips.py); the
  records around it stay.
- Every entry of a folder or glob that is not a regular readable file (a fifo, a socket, a
  directory, a dangling symlink, a symlink loop, an unreadable file) is skipped by name, never
  opened in a way that could block (data/source_files.py), never fatal for the rest.

Files are sharded across tasks (task r reads files r, r+T, r+2T, ...), so a task gets work only if
there are at least as many files as tasks: split very large jsonl/parquet files. A dataset is
sharded by `datasets` (by file when it has several, by row otherwise).

The filter stage writes the kept documents to `<work>/filtered/<rank>.parquet` (text, id, path,
language); later stages read back exactly their own rank's file (`RankParquetReader`), so the
document indices the dedup signatures refer to are the same in every stage.
"""

import codecs
import gzip
import itertools
import json
import os
import zlib
from typing import Optional

import orjson
import pyarrow
import pyarrow.parquet
from datatrove.data import Document
from datatrove.pipeline.readers import HuggingFaceDatasetReader, ParquetReader
from datatrove.pipeline.readers.base import BaseDiskReader
from datatrove.pipeline.writers import JsonlWriter, ParquetWriter
from datatrove.utils.logging import logger

from data.curation.listing import iter_listing
from data.curation.plan import CorpusPlan, paths_file
from data.curation.skips import SkipRecorder
from data.source_files import SkippedEntry, display_name, open_regular

BINARY_SNIFF_BYTES = 8192
PARQUET_BATCH_ROWS = 1000
WORK_SCHEMA = pyarrow.schema([("text", pyarrow.string()), ("id", pyarrow.string()),
                              ("path", pyarrow.string()), ("language", pyarrow.string())])


def _utf8(value) -> Optional[str]:
    """A row's id/path/language as text the work parquet can hold (a lone surrogate from a JSON
    escape becomes the characters \\udXXX)."""
    if value is None:
        return None
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


def _text_problem(data, key: str):
    """(reason, detail) when a record cannot be a document, None when its text is usable."""
    if not isinstance(data, dict):
        return "bad_record", f"is a JSON {type(data).__name__}, not an object with a {key!r} key"
    if data.get(key) is None:
        return "no_text", f"its {key!r} " + ("is null" if key in data else
                                             f"is missing (keys: {sorted(data)[:10]})")
    text = data[key]
    if not isinstance(text, str):
        return "text_not_string", f"its {key!r} is a {type(text).__name__}, not a string"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return "not_utf8", (f"its {key!r} holds a lone surrogate U+{ord(text[err.start]):04X} "
                            f"(not Unicode text)")
    return None


class _CodeRows(SkipRecorder):
    """A row of a jsonl/parquet file or a dataset -> the pipeline's document fields, or a skip."""

    path_key, language_key, source, unit = "path", "language", "", "line"

    def _row_fields(self, data, path: str, where: int, id_in_file, unit: str = "") -> Optional[dict]:
        problem = _text_problem(data, self.text_key)
        if problem:
            return self.skip_entry(path, where, *problem, unit or self.unit)
        text = data[self.text_key]
        if not text:
            self.stat_update("dropped_empty")  # counted like an empty source file, not listed
            return None
        doc_id = data.get(self.id_key)
        return {"text": text,
                "id": _utf8(doc_id) if doc_id is not None else f"{display_name(path)}/{id_in_file}",
                "metadata": {"path": _utf8(data.get(self.path_key)),
                             "language": _utf8(data.get(self.language_key))}}

    def _default_adapter(self, data: dict, path: str, id_in_file):
        # Datasets (datatrove's reader): a skipped row becomes an empty text, which it drops.
        return self._row_fields(data, path, id_in_file, id_in_file) or {"text": "", "id": ""}


class _ListedFiles(SkipRecorder):
    """A reader of a folder or glob input: this task's share of the listing (listing.py), each
    entry read, or skipped by name when it is not a regular readable file."""

    root: str = ""
    listing: str = ""

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        if data:
            yield from data
        self.start_skips(rank)
        for path, problem in itertools.islice(iter_listing(self.listing), rank, None, world_size):
            if problem:
                self.skip_entry(path, None, *problem)
                continue
            self.stat_update("input_files")
            try:
                for document in self.read_file(path):
                    self.update_doc_stats(document)
                    yield document
            except SkippedEntry as entry:
                self.skip_entry(path, None, entry.reason, entry.detail)


def _decompressed(stream, path: str):
    if path.endswith(".gz"):
        return gzip.GzipFile(fileobj=stream)
    if path.endswith(".zst"):
        try:
            import zstandard
        except ImportError:
            raise SkippedEntry("unreadable", "is zstd-compressed and the zstandard package is not "
                                             "installed (pip install zstandard)") from None
        return zstandard.ZstdDecompressor().stream_reader(stream, read_across_frames=True)
    return stream


def _parse_line(raw: bytes):
    """(record, None) or (None, (reason, detail))."""
    try:
        return orjson.loads(raw), None
    except orjson.JSONDecodeError:
        pass
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return None, ("not_utf8", f"is not UTF-8 ({err.reason} at byte {err.start})")
    try:
        return json.loads(text), None  # escapes of lone surrogates, which orjson refuses
    except ValueError as err:
        return None, ("bad_json", f"is not valid JSON ({err.msg}, column {err.colno})")


def _is_json_array(stream, path: str) -> bool:
    """A .json file holding one array of records (as datasets, and so scripts/preprocess.py, read)."""
    if not path.endswith((".json", ".json.gz")):
        return False
    return stream.peek(4096).lstrip(codecs.BOM_UTF8 + b" \t\r\n").startswith(b"[")


class CodeJsonlReader(_CodeRows, _ListedFiles, BaseDiskReader):
    """One document per line (or per element of a .json file's array); a line that cannot be one
    is skipped and named, the others stay. A UTF-8 byte order mark at the start is ignored."""

    name = "jsonl input"

    def _read_array(self, stream, filepath: str):
        records, problem = _parse_line(stream.read().removeprefix(codecs.BOM_UTF8))
        if problem:
            raise SkippedEntry(*problem)
        for index, record in enumerate(records):
            fields = self._row_fields(record, filepath, index, index, unit="record")
            if fields:
                yield Document(**fields)

    def read_file(self, filepath: str):
        number = 0
        with open_regular(os.path.join(self.root, filepath)) as raw_stream:
            try:
                stream = _decompressed(raw_stream, filepath)
                if _is_json_array(stream, filepath):
                    yield from self._read_array(stream, filepath)
                    return
                for number, line in enumerate(stream, 1):
                    if number == 1:
                        line = line.removeprefix(codecs.BOM_UTF8)
                    if not line.strip():
                        continue
                    with self.track_time():
                        record, problem = _parse_line(line)
                        if problem:
                            fields = self.skip_entry(filepath, number, *problem)
                        else:
                            fields = self._row_fields(record, filepath, number, number)
                    if fields:
                        yield Document(**fields)
            except (OSError, EOFError, zlib.error) as err:  # a cut or damaged compressed file
                self.skip_entry(filepath, number + 1, "truncated",
                                f"the rest of the file cannot be read ({err})")


def _batch_rows(batch: pyarrow.RecordBatch) -> list:
    """The rows of a batch as dicts; a row whose strings are not UTF-8 (a writer that did not
    check) as the UnicodeDecodeError, so that only that row is skipped."""
    try:
        return batch.to_pylist()
    except UnicodeDecodeError:
        rows = []
        for index in range(batch.num_rows):
            try:
                rows.append(batch.slice(index, 1).to_pylist()[0])
            except UnicodeDecodeError as err:
                rows.append(err)
        return rows


class CodeParquetReader(_CodeRows, _ListedFiles, BaseDiskReader):
    """One document per row (rows numbered from 0); a row that cannot be one is skipped and named."""

    name = "parquet input"
    unit = "row"

    def read_file(self, filepath: str):
        with open_regular(os.path.join(self.root, filepath)) as stream:
            try:
                parquet = pyarrow.parquet.ParquetFile(stream)
            except (pyarrow.ArrowException, OSError) as err:
                raise SkippedEntry("unreadable", f"is not a readable parquet file ({err})") from None
            names = parquet.schema_arrow.names
            if self.text_key not in names:
                raise SkippedEntry("no_text_column", f"has no column {self.text_key!r} (columns: "
                                   f"{names[:10]}): its {parquet.metadata.num_rows} rows")
            keys = (self.text_key, self.id_key, self.path_key, self.language_key)
            row = 0
            try:
                for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS,
                                                  columns=[key for key in keys if key in names]):
                    for data in _batch_rows(batch):
                        if isinstance(data, UnicodeDecodeError):
                            fields = self.skip_entry(filepath, row, "not_utf8", "holds a string that "
                                                     f"is not UTF-8 ({data.reason})", "row")
                        else:
                            fields = self._row_fields(data, filepath, row, row)
                        row += 1
                        if fields:
                            yield Document(**fields)
            except (pyarrow.ArrowException, OSError) as err:  # a damaged row group
                self.skip_entry(filepath, row, "truncated", f"rows from {row} on cannot be read ({err})",
                                "row")


class CodeDatasetReader(_CodeRows, HuggingFaceDatasetReader):
    name = "dataset input"

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        self.start_skips(rank)
        yield from super().run(data, rank, world_size)


class SourceFolderReader(_ListedFiles, BaseDiskReader):
    """One document per file of a folder. Files that are not UTF-8 text (a NUL byte in the first
    8 KiB, or invalid UTF-8), empty or over the size limit are dropped while reading, counted."""

    name = "source folder input"

    def __init__(self, folder: str, max_file_bytes: Optional[int] = None):
        super().__init__(folder, add_file_path=False)
        self.max_file_bytes = max_file_bytes

    def _drop(self, reason: str) -> None:
        self.stat_update("dropped", f"dropped_{reason}")

    def read_file(self, filepath: str):
        with open_regular(os.path.join(self.root, filepath)) as stream:
            # Checked before reading: a repository may hold multi-GB data files.
            size = os.fstat(stream.fileno()).st_size
            if self.max_file_bytes is not None and size > self.max_file_bytes:
                self._drop("too_large")
                return
            try:
                raw = stream.read()
            except OSError as err:  # EIO on a damaged disk
                raise SkippedEntry("unreadable", f"cannot be read ({err.strerror})") from None
        if not raw:
            self._drop("empty")
            return
        if b"\0" in raw[:BINARY_SNIFF_BYTES]:
            self._drop("binary")
            return
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            self._drop("not_utf8")
            return
        name = display_name(filepath)
        yield Document(text=text, id=name, metadata={"path": name, "language": None})


def input_readers(plan: CorpusPlan) -> list:
    """One datatrove reader per --input; chained in one pipeline they yield one after another."""
    max_bytes = plan.filters.max_file_bytes if plan.filters else None
    readers = []
    for index, spec in enumerate(plan.inputs):
        keys = dict(text_key=plan.text_key, id_key=plan.id_key)
        if spec.kind == "folder":
            reader = SourceFolderReader(spec.root, max_bytes)
        elif spec.kind == "jsonl":
            reader = CodeJsonlReader(spec.root, **keys)
        elif spec.kind == "parquet":
            reader = CodeParquetReader(spec.root, **keys)
        elif spec.kind == "hf":
            options = {"split": spec.split, **plan.hf_options}
            reader = CodeDatasetReader(spec.root, dataset_options=options, streaming=True, **keys)
        else:
            raise ValueError(f"unknown input kind {spec.kind!r} for {spec.spec!r}")
        reader.path_key, reader.language_key, reader.source = plan.path_key, plan.language_key, spec.spec
        reader.root = spec.root if spec.kind != "hf" else ""
        reader.listing = paths_file(plan, index)
        reader.work_dir, reader.input_index = plan.work_dir, index
        readers.append(reader)
    return readers


# ----------------------------------------------------------------------------- the work folder
def _to_work_row(writer, document) -> dict:
    return {"text": document.text, "id": document.id, "path": document.metadata.get("path"),
            "language": document.metadata.get("language")}


def _from_work_row(reader, data: dict, path: str, id_in_file) -> dict:
    return {"text": data["text"], "id": data["id"],
            "metadata": {"path": data["path"], "language": data["language"]}}


def filtered_folder(plan: CorpusPlan) -> str:
    return os.path.join(plan.work_dir, "filtered")


def filtered_writer(plan: CorpusPlan) -> ParquetWriter:
    """`<work>/filtered/<rank>.parquet`: one file per task (no rotation: readers find it by name)."""
    return ParquetWriter(filtered_folder(plan), output_filename="${rank}.parquet",
                         adapter=_to_work_row, schema=WORK_SCHEMA, max_file_size=-1,
                         use_content_defined_chunking=False, write_page_index=False)


class RankParquetReader(ParquetReader):
    """Reads `<folder>/<rank>.parquet` and nothing else: a task whose filter stage kept nothing has
    no file, and must not be handed another task's file (datatrove's own sharding would)."""

    name = "filtered documents"

    def __init__(self, folder: str):
        super().__init__(folder, adapter=_from_work_row)

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        if data:
            yield from data
        filename = f"{rank:05d}.parquet"
        if not self.data_folder.isfile(filename):
            logger.info(f"no {filename} in {self.data_folder.path}: the filter stage kept nothing here")
            return
        for document in self.read_files_shard([filename]):
            self.update_doc_stats(document)
            yield document


def removed_writer(plan: CorpusPlan, reason_group: str) -> Optional[JsonlWriter]:
    """With --write-removed: `<work>/removed/<reason_group>/<rank>.jsonl`, the dropped documents with
    `metadata.filter_reason`. Off by default (it can be most of a raw corpus)."""
    if not plan.write_removed:
        return None
    return JsonlWriter(os.path.join(plan.work_dir, "removed", reason_group),
                       output_filename="${rank}.jsonl", compression=None)
