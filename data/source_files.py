"""Opening the files of a corpus without trusting what a folder holds.

A corpus folder (or a glob) may hold anything a file system can: a fifo (a plain `open` waits
forever for a writer), a socket, a device, a directory named like a source file, a dangling
symlink, a symlink loop, a file the user cannot read, names with a newline, a leading space or
bytes that are not UTF-8. `open_regular(path)` opens a regular file for reading without ever
blocking, or raises `SkippedEntry` with a short reason (a statistics key) and a sentence; the
readers skip such entries by name, warned and counted, and go on with the others.
"""

import errno
import os
import stat
from typing import BinaryIO

KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a fifo (named pipe)"),
         (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
         (stat.S_ISBLK, "a block device"))


class SkippedEntry(Exception):
    """An entry that is not a regular readable file: `reason` is the statistics key."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def text_name(path: str) -> str:
    """A file name as text any UTF-8 writer takes: bytes that are not UTF-8 (os.walk keeps them as
    surrogate escapes, which Arrow, JSON and the tokenizer refuse) become the characters \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def display_name(path: str) -> str:
    """text_name, with a newline shown as \\n: one log line per name."""
    return text_name(path).replace("\n", "\\n")


def _open_error(path: str, error: OSError) -> SkippedEntry:
    if error.errno == errno.ENOENT:
        if os.path.islink(path):
            return SkippedEntry("dangling_symlink", f"a symbolic link to {os.readlink(path)!r}, "
                                                    f"which does not exist")
        return SkippedEntry("vanished", "no longer exists (removed after the folder was listed)")
    if error.errno == errno.ELOOP:
        return SkippedEntry("symlink_loop", "a symbolic link loop")
    if error.errno == errno.ENXIO:
        return SkippedEntry("not_a_file", "a socket or device without a reader")
    return SkippedEntry("unreadable", f"cannot be opened ({error.strerror})")


def open_regular(path: str) -> BinaryIO:
    """`path` opened for binary reading if it is a regular file (a symlink to one included);
    SkippedEntry otherwise. O_NONBLOCK: opening a fifo returns at once instead of waiting."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        raise _open_error(path, error) from None
    mode = os.fstat(fd).st_mode  # of what was opened: no window between a check and the open
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = next((name for test, name in KINDS if test(mode)), "not a regular file")
        raise SkippedEntry("not_a_file", f"is {kind}, not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def entry_problem(path: str) -> str:
    """Why `path` cannot be read ("" when it can be opened as a regular file)."""
    try:
        open_regular(path).close()
    except SkippedEntry as entry:
        return entry.detail
    return ""


def read_regular(path: str) -> bytes:
    """The whole content of a regular file; SkippedEntry for anything else or a failing read."""
    with open_regular(path) as stream:
        try:
            return stream.read()
        except OSError as error:  # EIO on a damaged disk, EISDIR on odd file systems
            raise SkippedEntry("unreadable", f"cannot be read ({error.strerror})") from None
