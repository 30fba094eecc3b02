"""The results queue of megatron-core's checkpoint writer, out of the stop signals' reach.

megatron-core's writer returns its results through a queue served by a process of its own
(filesystem_async._get_write_results_queue: a spawned multiprocessing Manager, made at the first
save). SLURM signals every process of a job step, so the stop signals that ask for the final
checkpoint (scancel's SIGTERM, the time-limit SIGUSR1, the launcher forwarding them) would kill
that server too, and with it the stop checkpoint (EOFError or BrokenPipeError on one rank while the
others wait in megatron's barrier).

So megatron gets a queue of ours, served by pretrain/engines/results_queue_server.py: it ignores
the stop signals, ends with the trainer, and starts in milliseconds (megatron's own server imports
the trainer's main module: seconds and ~390 MB per rank). It is started from a thread that blocks the
stop signals, so the new process cannot die of them before it ignores them (a blocked mask survives
fork and exec; the trainer's handlers run in the main thread, untouched), and before the first step
of a run that saves (`start_results_queue`), so that no save waits for it.
"""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import threading
from multiprocessing.managers import BaseManager
from multiprocessing.reduction import ForkingPickler

from pretrain.signals import STACKS_SIGNAL, STOP_SIGNALS

SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results_queue_server.py")
# What the server ignores (its own list: it imports the standard library only); INT: Ctrl-C.
_SERVER_SIGNALS = {*STOP_SIGNALS, STACKS_SIGNAL, signal.SIGINT}
_server: dict = {}  # thread; then queue and process (held: its stdin must stay open), or error


class _ResultsClient(BaseManager):
    pass


_ResultsClient.register("results_queue")


class _BytesQueue:
    """The queue as megatron uses it (put, get_nowait), holding pickled bytes on the server: the
    server unpickles what it receives, and the write results are torch classes it does not import."""

    def __init__(self, proxy):
        self._proxy = proxy

    def put(self, item) -> None:
        self._proxy.put(bytes(ForkingPickler.dumps(item)))

    def get_nowait(self):
        return ForkingPickler.loads(self._proxy.get_nowait())  # queue.Empty passes through


def _start_server() -> None:
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, _SERVER_SIGNALS)  # this thread only
        # -I -S: the standard library alone (not this folder, not site-packages): no torch import.
        process = subprocess.Popen([sys.executable, "-I", "-S", SERVER], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True)
        authkey = os.urandom(32)
        process.stdin.write(authkey.hex() + "\n")
        process.stdin.flush()  # kept open: the server ends when this end closes (our exit)
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"the checkpoint writer's results-queue server ({SERVER}) exited "
                               f"with status {process.wait()} before it served")
        client = _ResultsClient(address=ast.literal_eval(line), authkey=authkey)
        client.connect()
        _server.update(queue=_BytesQueue(client.results_queue()), process=process)
    except BaseException as error:  # noqa: BLE001 handed to the save that needs the queue
        _server["error"] = error


def start_results_queue() -> None:
    """Start the server in the background (once per process; the megatron engine calls this before
    the first step of a run that saves)."""
    if "thread" not in _server:
        _server["thread"] = threading.Thread(target=_start_server, name="checkpoint-results-queue",
                                             daemon=True)
        _server["thread"].start()


def install_results_queue() -> None:
    """Before each save: hand megatron our queue (waiting for the server if it is still starting)."""
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    start_results_queue()
    _server["thread"].join()
    if "error" in _server:
        raise _server["error"]
    filesystem_async._results_queue = _server["queue"]
