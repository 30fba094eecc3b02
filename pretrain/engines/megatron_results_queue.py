"""The results queue of megatron-core's checkpoint writer, out of the stop signals' reach.

megatron-core's writer returns its results through a queue served by a process of its own
(filesystem_async._get_write_results_queue: a spawned multiprocessing Manager, made at the first
save). SLURM signals every process of a job step, so the stop signals that ask for the final
checkpoint (scancel's SIGTERM, the time-limit SIGUSR1, the launcher forwarding them) killed that
server too, even while it started; the save then failed with EOFError or BrokenPipeError (the stop
checkpoint lost, or one rank failed while the others waited in megatron's barrier until KillWait).
We start the server ourselves and hand megatron its queue: from a thread of its own, which blocks
these signals (a blocked mask survives fork and exec, so the new process cannot die of them while
it starts up; the trainer's handlers run in the main thread, untouched), and the server ignores
them from its initializer on. A spawned server imports the trainer's main module (seconds): the
trainer starts it before the first step (`start_results_queue`), so that the first save, often
the stop checkpoint, does not wait for it. megatron still shuts it down at exit.
"""

from __future__ import annotations

import os
import signal

_SERVER_SIGNALS = {signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT}  # INT: Ctrl-C
_server: dict = {}  # thread, manager, error


def _serve_for(trainer_pid: int) -> None:
    """Runs first in the queue's server process, once it has started up. The server ignores the
    stop signals, so it must not outlive a trainer that died without shutting it down (kill -9):
    it exits when it is no longer the trainer's child."""
    import threading
    import time

    for signum in _SERVER_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)

    def exit_with_the_trainer():
        while os.getppid() == trainer_pid:
            time.sleep(1)
        os._exit(0)

    threading.Thread(target=exit_with_the_trainer, daemon=True).start()


def _start_server() -> None:
    import multiprocessing
    from multiprocessing import resource_tracker
    from multiprocessing.managers import SyncManager

    try:
        manager = SyncManager(ctx=multiprocessing.get_context("spawn"))
        signal.pthread_sigmask(signal.SIG_BLOCK, _SERVER_SIGNALS)
        # A spawn needs multiprocessing's resource tracker, and starting one unblocks SIGINT and
        # SIGTERM in the spawning thread afterwards (resource_tracker.ensure_running): start it
        # first (under the mask, so it cannot die of SIGUSR1/2 either), then block again.
        resource_tracker.ensure_running()
        signal.pthread_sigmask(signal.SIG_BLOCK, _SERVER_SIGNALS)
        manager.start(initializer=_serve_for, initargs=(os.getpid(),))
        _server["manager"] = manager
    except BaseException as error:  # noqa: BLE001 handed to the save that needs the queue
        _server["error"] = error


def start_results_queue() -> None:
    """Start the server in the background (once per process; the megatron engine calls this before
    the first step of a run that saves). Not a daemon thread: an exit while it starts waits for
    it, so that megatron's exit hook shuts the server down."""
    import threading

    if "thread" not in _server:
        _server["thread"] = threading.Thread(target=_start_server, name="checkpoint-results-queue")
        _server["thread"].start()


def install_results_queue() -> None:
    """Before each save: hand megatron our queue (waiting for the server if it is still starting)."""
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    start_results_queue()
    _server["thread"].join()
    if "error" in _server:
        raise _server["error"]
    if "queue" not in _server:
        _server["queue"] = _server["manager"].Queue()
    filesystem_async._results_queue = _server["queue"]
