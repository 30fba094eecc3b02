"""The errors of the data pipeline: one family, so an entry point maps all of them to one exit code
and prints the message (it names the file or key, what is wrong and the fix) without a traceback.

    DataError (ValueError)            any bad or damaged input of the data pipeline
      DataConfigError                 a `data.*` value that cannot work (DataConfig.validate)
      MissingDataError (+ FileNotFoundError)   a corpus, shard or tokenizer file that is not there
      CorpusError                     a corpus file that cannot be read (bad JSON line, no UTF-8 file)
        MissingColumnError (+ KeyError)        the text column is not in the corpus
      ShardError                      a tokenized shard (.bin/.idx/manifest) missing, damaged or foreign
      FingerprintMismatch             resuming on data other than the checkpoint's
      DiskFullError                   no space left (or over quota) while writing data

The second bases keep older callers that caught FileNotFoundError or KeyError working.
"""

import errno


class DataError(ValueError):
    pass


class DataConfigError(DataError):
    pass


class MissingDataError(DataError, FileNotFoundError):
    def __str__(self) -> str:  # FileNotFoundError's own str() expects (errno, strerror)
        return DataError.__str__(self)


class CorpusError(DataError):
    pass


class MissingColumnError(CorpusError, KeyError):
    def __str__(self) -> str:  # KeyError's str() would print the message in quotes
        return CorpusError.__str__(self)


class ShardError(DataError):
    pass


class FingerprintMismatch(DataError):
    pass


class DiskFullError(DataError):
    """No space left (or over quota) while writing data: nothing half-written is left as done."""


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def disk_full(error: BaseException, where: str, fix: str):
    """A DiskFullError naming `where` and `fix` when `error` is a full disk or quota, else None."""
    if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
        name = f": {error.filename}" if error.filename else ""
        return DiskFullError(f"no space left on the device while writing {where} "
                             f"({error.strerror}{name}); {fix}")
    return None
