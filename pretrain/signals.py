"""Stop requests from the scheduler: SIGUSR1 (SLURM's warning before the time limit) and SIGTERM.

The contract with launch/: on either signal the trainer finishes the step it is in, saves a
checkpoint, and exits with status EXIT_REQUEUE (75, EX_TEMPFAIL), which the sbatch script reads as
"requeue me". The handler only sets a flag, so a signal that arrives again while the checkpoint is
being written changes nothing: the save runs to its end and `latest` moves only after it (see
pretrain/checkpoint/frame.py). Ranks agree on stopping through an all-reduce of the flag each step,
since the scheduler may signal only some of them.

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


class StopRequest:
    """Install with `StopRequest.install()`; read `.requested`; `restore()` puts the old handlers back."""

    def __init__(self):
        self.requested = False
        self.signal_name: str | None = None
        self._previous = {}

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
        for signum in STOP_SIGNALS:
            stop._previous[signum] = signal.signal(signum, stop._handle)
        return stop

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


def dump_stacks_on_request() -> None:
    """From now on SIGUSR2 prints every thread's stack to stderr (processes forked later too)."""
    faulthandler.register(STACKS_SIGNAL, all_threads=True)
