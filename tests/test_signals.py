"""pretrain/signals.py in this process: a stop signal after a run is recorded (not fatal) and stops
the process's next run (a Hydra sweep's next job) at its first step. The whole-run behaviour (exit
75, the checkpoint, signals to every process) is in test_trainer.py and test_checkpoint_robust.py."""

import os
import signal

import pytest

from pretrain import signals
from pretrain.signals import STOP_SIGNALS, StopRequest


@pytest.fixture(autouse=True)
def default_handlers():
    yield
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    signals._stops_between_runs.clear()


def test_a_signal_during_a_run_asks_it_to_stop():
    stop = StopRequest.install()
    assert not stop.requested
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.requested and stop.signal_name == "SIGTERM"


def test_a_signal_after_a_run_stops_the_next_one_and_kills_nothing():
    first = StopRequest.install()
    first.finish()
    os.kill(os.getpid(), signal.SIGUSR1)  # with default handlers back, this would end pytest
    assert not first.requested
    following = StopRequest.install()
    assert following.requested and following.signal_name == "SIGUSR1"
    following.finish()
    assert not StopRequest.install().requested  # recorded once, used once
