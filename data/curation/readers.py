"""Where documents come from: the inputs, and the work folder's intermediate files.

Every document leaves a reader as a datatrove `Document` with `text`, `id` and two metadata keys the
filters read, `path` and `language` (None when the input has no such column):

- a folder of source files (`SourceFolderReader`): one document per file, its path relative to the
  folder as id and path. Files that are not UTF-8 text (a NUL byte in the first 8 KiB, or invalid
  UTF-8) and files over the size limit are dropped while reading, with the reason in the stats.
  The text is decoded as written (no newline translation): the tokenizer round-trips it exactly.
- jsonl / parquet files and Hugging Face datasets (datatrove's `JsonlReader`, `ParquetReader`,
  `HuggingFaceDatasetReader`, streaming): the `--text-key`, `--id-key`, `--path-key` and
  `--language-key` columns; other columns are not carried. Rows with empty text are skipped by
  datatrove's readers.

Files are sharded across tasks (task r reads files r, r+T, r+2T, ...), so a task gets work only if
there are at least as many files as tasks: split very large jsonl/parquet files. A dataset is
sharded by `datasets` (by file when it has several, by row otherwise).

The filter stage writes the kept documents to `<work>/filtered/<rank>.parquet` (text, id, path,
language); later stages read back exactly their own rank's file (`RankParquetReader`), so the
document indices the dedup signatures refer to are the same in every stage.
"""

import os
from typing import Optional

import pyarrow
from datatrove.pipeline.readers import HuggingFaceDatasetReader, JsonlReader, ParquetReader
from datatrove.pipeline.readers.base import BaseDiskReader
from datatrove.pipeline.writers import JsonlWriter, ParquetWriter
from datatrove.utils.logging import logger

from data.curation.plan import CorpusPlan, paths_file
from data.errors import MissingColumnError

BINARY_SNIFF_BYTES = 8192
WORK_SCHEMA = pyarrow.schema([("text", pyarrow.string()), ("id", pyarrow.string()),
                              ("path", pyarrow.string()), ("language", pyarrow.string())])


def _optional_str(value) -> Optional[str]:
    return None if value is None else str(value)


class _CodeRows:
    """A row of a jsonl/parquet file or a dataset -> the pipeline's document fields."""

    path_key, language_key, source = "path", "language", ""

    def _default_adapter(self, data: dict, path: str, id_in_file):
        if self.text_key not in data:
            raise MissingColumnError(f"{self.source}: {path} has no column {self.text_key!r} (columns: "
                                     f"{sorted(data)}); pass the text column's name with --text-key")
        text, doc_id = data[self.text_key], data.get(self.id_key)
        return {
            "text": text if isinstance(text, str) else "",
            "id": str(doc_id) if doc_id is not None else f"{path}/{id_in_file}",
            "metadata": {"path": _optional_str(data.get(self.path_key)),
                         "language": _optional_str(data.get(self.language_key))},
        }


class CodeJsonlReader(_CodeRows, JsonlReader):
    name = "jsonl input"


class CodeParquetReader(_CodeRows, ParquetReader):
    name = "parquet input"


class CodeDatasetReader(_CodeRows, HuggingFaceDatasetReader):
    name = "dataset input"


class SourceFolderReader(BaseDiskReader):
    """One document per file of a folder (the files listed in `paths_file`, relative to it)."""

    name = "source folder input"

    def __init__(self, folder: str, paths_file: str, max_file_bytes: Optional[int] = None):
        super().__init__(folder, paths_file=paths_file, add_file_path=False)
        self.max_file_bytes = max_file_bytes

    def _drop(self, reason: str) -> None:
        self.stat_update("dropped", f"dropped_{reason}")

    def read_file(self, filepath: str):
        # Checked before reading: a repository may hold multi-GB data files.
        if self.max_file_bytes is not None and self.data_folder.size(filepath) > self.max_file_bytes:
            self._drop("too_large")
            return
        with self.data_folder.open(filepath, "rb") as stream:
            raw = stream.read()
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
        yield self.get_document_from_dict(
            {"text": text, "id": filepath, "metadata": {"path": filepath, "language": None}},
            filepath, 0)


def input_readers(plan: CorpusPlan) -> list:
    """One datatrove reader per --input; chained in one pipeline they yield one after another."""
    max_bytes = plan.filters.max_file_bytes if plan.filters else None
    readers = []
    for index, spec in enumerate(plan.inputs):
        if spec.kind == "folder":
            readers.append(SourceFolderReader(spec.root, paths_file(plan, index), max_bytes))
            continue
        keys = dict(text_key=plan.text_key, id_key=plan.id_key)
        if spec.kind == "jsonl":
            reader = CodeJsonlReader(spec.root, paths_file=paths_file(plan, index), **keys)
        elif spec.kind == "parquet":
            reader = CodeParquetReader(spec.root, paths_file=paths_file(plan, index), **keys)
        elif spec.kind == "hf":
            options = {"split": spec.split, **plan.hf_options}
            reader = CodeDatasetReader(spec.root, dataset_options=options, streaming=True, **keys)
        else:
            raise ValueError(f"unknown input kind {spec.kind!r} for {spec.spec!r}")
        reader.path_key, reader.language_key, reader.source = plan.path_key, plan.language_key, spec.spec
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
