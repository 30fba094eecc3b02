"""argparse types that check a flag's value up front: a bad value is argparse's own error (exit 2,
"argument --FLAG: 'VALUE' is not ..."), never a ValueError or a ZeroDivisionError from deep in a
tool once its inputs have been read."""

from __future__ import annotations

import argparse
from typing import Any, Callable


def checked(convert: Callable[[str], Any], accept: Callable[[Any], bool], what: str, *,
            keep_text: bool = False) -> Callable[[str], Any]:
    """The argparse type for values that `convert` reads and `accept` takes; otherwise the error
    "'TEXT' is not WHAT". With `keep_text`, the flag's text itself is the value (a tool that parses
    it again later, e.g. a size written like 5GB)."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not accept(value):  # NaN fails every comparison: refused too
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return text if keep_text else value
    return parse
