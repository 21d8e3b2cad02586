"""train/stop.py: one stop request however many copies of the signal arrive, a second
request stops at once, and nothing interrupts a run that is already closing."""

from __future__ import annotations

import signal

import pytest

from grpo_cli.errors import Terminated
from grpo_cli.train import stop as stop_mod
from grpo_cli.train.stop import StopRequest


def test_copies_of_one_signal_are_one_request(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([100.0, 100.01, 100.5])  # SLURM's copy, the launcher's, the agent's
    monkeypatch.setattr(stop_mod.time, "monotonic", lambda: next(clock))
    stop = StopRequest()
    for _ in range(3):
        stop.handler(signal.SIGTERM, None)  # none raises: the step finishes first
    assert stop.signum == signal.SIGTERM


def test_a_second_request_stops_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([100.0, 100.0 + stop_mod.SAME_REQUEST_S + 0.1])
    monkeypatch.setattr(stop_mod.time, "monotonic", lambda: next(clock))
    stop = StopRequest()
    stop.handler(signal.SIGINT, None)
    with pytest.raises(KeyboardInterrupt):
        stop.handler(signal.SIGINT, None)


def test_signals_while_closing_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([100.0, 200.0])
    monkeypatch.setattr(stop_mod.time, "monotonic", lambda: next(clock))
    stop = StopRequest()
    stop.handler(signal.SIGTERM, None)
    with pytest.raises(Terminated):
        stop.stop_now()  # the loop stops after the saved step
    stop.handler(signal.SIGTERM, None)  # e.g. torchrun stopping the last rank: no raise
