"""The HumanEval harness: canonical solutions pass, planted bugs fail, and hostile completions (a
fork bomb, a memory hog, writes outside the sandbox, sockets, killing the parent, an endless loop)
are contained, counted as failed, and the evaluation around them finishes. Every backend this
machine has is tested (bubblewrap, and unshare as root)."""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from evaluation.executor import execute
from evaluation.problems import Problem
from evaluation.sandbox import Limits, Sandbox
from evaluation.sandbox_users import leftover_processes, lease_user
from evaluation.sandbox_view import base_interpreter
from tests.fixtures import REPO, sandbox_limits

# Where time is not what a test checks, a timeout no loaded 2-core machine reaches; where it is,
# a short one (the bounds are stated against it).
SHORT = Limits(timeout_s=3.0, memory_bytes=1 << 30)
# A timed-out run ends within the timeout plus this: the kill, and the kernel tearing down the
# sandbox's namespaces (measured 0.01-0.06 s; the rest is room for a loaded 2-core machine).
KILL_GRACE_S = 2.0
WORKERS = 2

# The canonical answer passed through a wrong-making wrapper: the tests see a plausible function
# whose every result is off (a bool negated, a number + 1, a string or list lengthened).
PLANTED_BUG = '''

_correct_{entry} = {entry}


def {entry}(*args, **kwargs):
    return _planted_bug(_correct_{entry}(*args, **kwargs))


def _planted_bug(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "?"
    if isinstance(value, (list, tuple)):
        return type(value)(list(value) + [None])
    return "planted bug"
'''


def test_a_sandbox_is_available_on_this_machine():
    assert Sandbox(sandbox_limits()).backend in ("bwrap", "unshare")


@pytest.mark.slow
def test_canonical_solutions_all_pass(sandbox, problems):
    outcomes = execute([(p, p.canonical_solution) for p in problems], sandbox, WORKERS,
                       progress=False)
    failed = [(p.task_id, o.result) for p, o in zip(problems, outcomes) if not o.passed]
    assert len(problems) == 164 and failed == []


@pytest.mark.slow
def test_each_planted_bug_fails(sandbox, problems):
    jobs = [(p, p.canonical_solution + PLANTED_BUG.format(entry=p.entry_point)) for p in problems]
    outcomes = execute(jobs, sandbox, WORKERS, progress=False)
    passed = [p.task_id for p, o in zip(problems, outcomes) if o.passed]
    assert passed == []
    assert all(o.result.startswith("failed: AssertionError") or "Error" in o.result
               for o in outcomes)


def probe(sandbox, body: str, expected):
    """Run ``body`` as the completion of ``def probe():``, whose tests pass only if it returns
    ``expected`` (the result says what it returned otherwise)."""
    problem = Problem("probe", 'def probe():\n    """What the sandbox sees."""\n', "",
                      f"def check(candidate):\n    got = candidate()\n"
                      f"    assert got == {expected!r}, got\n", "probe")
    return sandbox.run(problem, body)


def test_the_sandbox_runs_the_base_interpreter_and_its_standard_library_only(sandbox):
    """The interpreter the harness's venv was made from, without site-packages (-I -S); not
    another Python the sandbox user happens to reach (bubblewrap made the folders above a bound
    interpreter 0700, and a root harness's sandbox fell back to /usr's Python)."""
    body = ("    import os, sys\n"
            "    return [os.path.realpath(sys.executable), os.path.dirname(os.__file__),\n"
            "            sys.flags.no_site, [p for p in sys.path if 'packages' in p]]\n")
    stdlib = os.path.dirname(os.path.realpath(os.__file__))
    outcome = probe(sandbox, body, [base_interpreter(), stdlib, 1, []])
    assert outcome.passed, outcome


def test_a_harness_run_from_a_linked_venv_under_tmp_works(sandbox):
    """A checkout or venv in /tmp (where `git clone` into /tmp puts `make test`'s), reached
    through a symbolic link: the sandbox binds the base interpreter at its real path, read-only."""
    with tempfile.TemporaryDirectory(dir="/tmp") as folder:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", f"{folder}/venv"],
                       check=True)
        os.symlink(f"{folder}/venv", f"{folder}/link")
        _check_harness([f"{folder}/link/bin/python"], sandbox.backend)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting below /tmp needs root")
def test_a_mount_point_below_tmp_does_not_matter(sandbox):
    """The unshare backend remounted every host mount read-only, and one below /tmp (covered by
    the fresh /tmp) failed the run closed. Only the sandbox's own mounts are touched now."""
    with tempfile.TemporaryDirectory(dir="/tmp") as folder:
        script = (f'mount -t tmpfs loopcoder-test "{folder}" && mkdir "{folder}/deeper" && '
                  f'mount -t tmpfs loopcoder-test2 "{folder}/deeper" && exec "$@"')
        _check_harness(["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c",
                        script, "sh", sys.executable], sandbox.backend)


def _check_harness(python: list, backend: str) -> None:
    # The venv has no packages: only the sandbox's modules (standard library only) are imported.
    harness = (
        "import json, sys\n"
        f"sys.path.insert(0, {REPO!r})\n"
        "from evaluation.problems import Problem\n"
        "from evaluation.sandbox import Limits, Sandbox\n"
        f"sandbox = Sandbox(Limits(timeout_s=30.0, memory_bytes=1 << 30), {backend!r})\n"
        "problem = Problem('probe', 'def probe():\\n    \"\"\"Returns 1.\"\"\"\\n', '',\n"
        "                  'def check(candidate):\\n    assert candidate() == 1\\n', 'probe')\n"
        "runs = [sandbox.run(problem, '    return 1\\n'),\n"
        "        sandbox.run(problem, '    import sys\\n'\n"
        "                             '    open(sys.prefix + \"/w\", \"w\")\\n')]\n"
        "print(json.dumps([[run.passed, run.result] for run in runs]))\n")
    result = subprocess.run([*python, "-c", harness], capture_output=True, text=True,
                            timeout=120, cwd="/")
    assert result.returncode == 0, result.stderr[-3000:]
    (reads, reads_result), (writes, writes_result) = json.loads(result.stdout)
    assert reads, reads_result
    assert not writes and "Read-only file system" in writes_result, writes_result


def test_a_run_that_exits_before_its_tests_is_not_a_pass(sandbox, problems):
    add = problems[53]
    for body in ("    import sys\n    sys.exit(0)\n", "    import os\n    os._exit(0)\n"):
        outcome = sandbox.run(add, body)
        assert not outcome.passed and outcome.result.startswith("failed"), outcome


def test_an_endless_loop_times_out_within_its_bound(sandbox, problems):
    sandbox = Sandbox(SHORT, backend=sandbox.backend)
    started = time.perf_counter()
    outcome = sandbox.run(problems[53], "    while True:\n        pass\n")
    seconds = time.perf_counter() - started  # until every process of the run is gone
    assert outcome.result == "timed out"
    assert SHORT.timeout_s <= seconds < SHORT.timeout_s + KILL_GRACE_S


def test_the_environment_is_scrubbed(sandbox, problems, monkeypatch):
    monkeypatch.setenv("LOOPCODER_TEST_SECRET", "hunter2")
    body = ("    import os\n"
            "    leaked = any('hunter2' in value for value in os.environ.values())\n"
            "    return x + y if leaked or os.getcwd() != '/tmp' else None\n")
    outcome = sandbox.run(problems[53], body)
    assert not outcome.passed and outcome.result.startswith("failed: AssertionError"), outcome


def _hostile_completions(tmp_path, port: int) -> dict:
    """name -> a body for add(x, y) that returns the right sum only if its attack worked, so a
    breach shows as a pass."""
    existing = tmp_path / "existing.txt"
    existing.write_text("original")
    outside = [str(tmp_path / "escaped.txt"), os.path.join(REPO, f".escaped-{os.getpid()}"),
               str(existing), "/var/tmp/escaped.txt", "/dev/shm/escaped.txt"]
    return {
        # Every process forks forever: bounded by the process limit, ended by the timeout.
        "fork bomb": "    import os\n    while True:\n        try:\n            os.fork()\n"
                     "        except OSError:\n            pass\n",
        # 64 x 128 MiB = 8 GiB, a third of this machine's memory were it not limited.
        "memory hog": "    blocks = [bytearray(128 << 20) for _ in range(64)]\n    return x + y\n",
        "writes outside": f"    written = 0\n    for path in {outside!r}:\n        try:\n"
                          "            with open(path, 'w') as stream:\n"
                          "                stream.write('escaped')\n            written += 1\n"
                          "        except OSError:\n            pass\n"
                          "    return x + y if written else None\n",
        "socket to localhost": f"    import socket\n    try:\n"
                               f"        socket.create_connection(('127.0.0.1', {port}), 2)\n"
                               "    except OSError:\n        return None\n    return x + y\n",
        # Tried only where the sandbox's routing table is empty (its own network namespace,
        # at most a loopback): then a packet to any other address cannot leave, so nothing is
        # sent. 192.0.2.1 is TEST-NET-1 (RFC 5737), an address reserved for examples.
        "socket outside": f"    import socket\n    try:\n"
                          f"        socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
                          "        return x + y\n    except OSError:\n        pass\n"
                          "    with open('/proc/net/route') as routes:\n"
                          "        assert routes.read().splitlines()[1:] == [], 'a route exists'\n"
                          "    try:\n"
                          "        socket.create_connection(('192.0.2.1', 80), timeout=2)\n"
                          "    except OSError as error:\n"
                          "        raise AssertionError(f'outside: {error}')\n    return x + y\n",
        "kill parent": "    import os, signal\n    os.kill(os.getppid(), signal.SIGKILL)\n"
                       "    return None\n",
        "kill own group": "    import os, signal\n    os.killpg(os.getpgid(0), signal.SIGKILL)\n"
                          "    return None\n",
        "endless loop": "    while True:\n        pass\n",
    }


@pytest.mark.slow
def test_hostile_completions_are_contained_and_the_evaluation_finishes(sandbox, problems,
                                                                       tmp_path):
    # A 10 s timeout here: the fork bomb's 32 spinning processes and the endless loop take most
    # of the CPU meanwhile (rlimits do not share the CPU out), and the honest samples beside them
    # must still finish on a loaded 2-core machine.
    limits = Limits(timeout_s=10.0, memory_bytes=1 << 30)
    sandbox = Sandbox(limits, backend=sandbox.backend)
    # First a bomb that stops by itself at 200 processes: the endless one runs only once the
    # process limit is seen to hold (a broken limit must fail this test, not hang the machine).
    bounded = ("    import os, time\n    for _ in range(200):\n        if os.fork() == 0:\n"
               "            time.sleep(5)\n            os._exit(0)\n    return x + y\n")
    outcome = sandbox.run(problems[53], bounded)
    assert outcome.result == "failed: BlockingIOError: [Errno 11] Resource temporarily unavailable"

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    hostile = _hostile_completions(tmp_path, listener.getsockname()[1])
    harmless = problems[:12]
    # Hostile and honest samples interleaved on the same workers.
    jobs = [(problems[53], body) for body in hostile.values()]
    honest_jobs = [(p, p.canonical_solution) for p in harmless]
    jobs = [job for pair in zip(jobs, honest_jobs) for job in pair]
    jobs += [(p, p.canonical_solution) for p in harmless[len(hostile):]]
    started = time.perf_counter()
    outcomes = execute(jobs, sandbox, WORKERS, progress=False)
    seconds = time.perf_counter() - started

    results = {name: outcomes[2 * i] for i, name in enumerate(hostile)}
    breached = {name: o.result for name, o in results.items() if o.passed}
    assert breached == {}
    honest = outcomes[1:2 * len(hostile):2] + outcomes[2 * len(hostile):]
    assert [o.result for o in honest] == ["passed"] * len(harmless)
    assert results["fork bomb"].result == "timed out"
    assert results["endless loop"].result == "timed out"
    # MemoryError at the 1 GiB address-space limit; on a machine loaded enough that touching
    # that gigabyte takes 10 s, the timeout stops it first: contained either way.
    assert results["memory hog"].result in ("failed: MemoryError", "timed out")
    assert "Network is unreachable" in results["socket outside"].result
    for name in ("fork bomb", "endless loop"):
        assert results[name].seconds < limits.timeout_s + KILL_GRACE_S, (name, results[name])
    with pytest.raises(BlockingIOError):
        listener.accept()  # nothing ever connected
    listener.close()
    escaped = [p for p in (tmp_path / "escaped.txt", os.path.join(REPO, f".escaped-{os.getpid()}"))
               if os.path.exists(p)]
    for path in escaped:
        os.remove(path)
    assert escaped == [] and (tmp_path / "existing.txt").read_text() == "original"
    assert not os.path.exists("/var/tmp/escaped.txt") and not os.path.exists("/dev/shm/escaped.txt")
    if os.geteuid() == 0:
        assert leftover_processes() == {}  # nothing a sandbox started outlives its run
    # Two workers, two 10 s timeouts and quick failures: it finishes (generous bound).
    assert seconds < 120


def test_the_harness_is_not_reachable_by_signals(sandbox, problems):
    """The harness runs in another session and PID namespace (and, as root, as another user):
    the completion's parent is the sandbox's own, and the harness never hears of its signal.
    (Were the sandbox broken, the harness would be that parent: the handler below fails the
    test.)"""
    body = ("    import os, signal\n"
            "    try:\n"
            "        os.kill(os.getppid(), signal.SIGTERM)\n"
            "    except OSError:\n"
            "        pass\n"
            "    return None\n")
    previous = signal.signal(signal.SIGTERM, lambda *_: pytest.fail("the harness got SIGTERM"))
    try:
        outcome = sandbox.run(problems[53], body)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert not outcome.passed


@pytest.mark.skipif(os.geteuid() != 0, reason="sandbox users are leased by a root harness")
def test_a_sandbox_user_is_leased_to_one_run_at_a_time_across_processes():
    # Searches start at user 1000 here: the workers of other tests start theirs at 0, 1, ...
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom evaluation.sandbox_users import lease_user\n"
         "with lease_user(1000) as uid:\n    print(uid, flush=True)\n    sys.stdin.read()"],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        held = int(holder.stdout.readline())
        with lease_user(1000) as first, lease_user(1000) as second:
            assert len({held, first, second}) == 3
    finally:
        holder.communicate("", timeout=30)
    with lease_user(1000) as again:  # the holder is gone: its lease went with it
        assert again == held


def test_bad_limits_and_backends_are_refused():
    with pytest.raises(ValueError, match="timeout_s=0"):
        Limits(timeout_s=0)
    with pytest.raises(ValueError, match="needs at least 64 MiB"):
        Limits(memory_bytes=1 << 20)  # the interpreter would not start: every sample would fail
    with pytest.raises(ValueError, match="use auto, bwrap or unshare"):
        Sandbox(sandbox_limits(), backend="docker")
