"""Signals that stop a run cleanly, and the exit codes they end with (maedfer.training.runtime)."""

import os
import signal

import pytest

from maedfer.training.runtime import StopSignals, stop_exit_code


@pytest.mark.parametrize(
    ("sig", "code"),
    [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGUSR1, 143)],
)
def test_stop_signal_sets_the_flag_instead_of_killing(sig: int, code: int) -> None:
    before = signal.getsignal(sig)
    with StopSignals() as stop:
        os.kill(os.getpid(), sig)  # what sbatch --signal=USR1@120 / kill / Ctrl-C send
        assert stop.signum == sig
    assert stop.name == signal.Signals(sig).name
    assert stop_exit_code(stop.name) == code
    assert signal.getsignal(sig) is before  # the handler is restored on leaving


def test_a_second_signal_restores_the_previous_handlers() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert signal.getsignal(signal.SIGTERM) == stop._handle
        os.kill(os.getpid(), signal.SIGUSR1)  # still caught: restores the previous handlers
        assert signal.getsignal(signal.SIGTERM) == before
    assert stop.name == "SIGUSR1"
