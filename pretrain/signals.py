"""Stop requests from the scheduler: SIGUSR1 (SLURM's warning before the time limit) and SIGTERM.

The contract with launch/: on either signal the trainer finishes the step it is in, saves a
checkpoint, and exits with status EXIT_REQUEUE (75, EX_TEMPFAIL), which the sbatch script reads as
"requeue me". The handler only sets a flag, so a signal that arrives again while the checkpoint is
being written changes nothing: the save runs to its end and `latest` moves only after it (see
pretrain/checkpoint/checkpointer.py). Ranks agree on stopping through an all-reduce of the flag each
step, since the scheduler may signal only some of them.

After a run (the process tearing down after its checkpoint, or between the jobs of a Hydra
multirun) a stop signal is recorded, not fatal (`StopRequest.finish`): a late one would otherwise
replace the exit status 75 that the batch script reads by a death by signal. A recorded stop makes
the process's next run stop at its first step. Once the CLI is done, `ignore_stop_signals` holds
them off through the interpreter's shutdown (which puts the default action back for signals with a
Python handler, not for ignored ones). Before the first run the defaults stand: nothing to save.

SIGUSR2 is the other way round: it stops nothing. It prints every thread's Python stack to stderr
(faulthandler, which needs no working interpreter state) and the run goes on; the answer to "where
is this rank waiting?" for a job that hangs (`scancel --signal=USR2 JOBID` reaches every rank).
"""

from __future__ import annotations

import faulthandler
import logging
import signal

EXIT_REQUEUE = 75
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
STACKS_SIGNAL = signal.SIGUSR2

logger = logging.getLogger(__name__)
_stops_between_runs: list[str] = []


class StopRequest:
    """Install with `StopRequest.install()` for a run; read `.requested`; `finish()` after it."""

    def __init__(self):
        self.requested = False
        self.signal_name: str | None = None

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.requested:
            logger.warning("%s again: already stopping after this step's checkpoint", name)
            return
        self.requested, self.signal_name = True, name
        logger.warning("%s received: finishing this step, then checkpoint and exit %d", name,
                       EXIT_REQUEUE)

    @classmethod
    def install(cls) -> "StopRequest":
        stop = cls()
        if _stops_between_runs:  # a sweep's next job, asked to stop before it began
            stop.requested, stop.signal_name = True, _stops_between_runs[-1]
            _stops_between_runs.clear()
        for signum in STOP_SIGNALS:
            signal.signal(signum, stop._handle)
        return stop

    def finish(self) -> None:
        """The run is over: from now on a stop signal is recorded for a next run of this process."""
        for signum in STOP_SIGNALS:
            signal.signal(signum, _record_after_run)


def _record_after_run(signum, frame) -> None:
    name = signal.Signals(signum).name
    _stops_between_runs.append(name)
    logger.warning("%s received after the run: a next run of this process would stop at its "
                   "first step", name)


def ignore_stop_signals() -> None:
    """Nothing is left to stop: late stop signals are ignored until the process has exited. (Not
    a blocked mask: that is per thread, and the others would take the signal.)"""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def dump_stacks_on_request() -> None:
    """From now on SIGUSR2 prints every thread's stack to stderr (processes forked later too)."""
    faulthandler.register(STACKS_SIGNAL, all_threads=True)
