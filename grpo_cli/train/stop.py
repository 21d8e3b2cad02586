"""Stopping on a signal: SIGTERM (SLURM preemption, kill) and Ctrl-C end the run after the
current step, on every rank at the same step; a second signal ends it at once.

One request often arrives as several copies within milliseconds (SLURM signals every process
of the job, and the launchers pass the signal on too): copies within ``SAME_REQUEST_S`` count
once. Once the run is stopping (its last step saved), further signals are ignored, so a late
copy cannot cut off the run store's final record."""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from grpo_cli.errors import Terminated
from grpo_cli.train import engine as eng

SAME_REQUEST_S = 2.0
# SIGUSR2: what submitit has SLURM send before a job's time limit; it stops like SIGTERM.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)


@dataclass
class StopRequest:
    """A signal asked the run to stop: the loop finishes its step, saves if asked, then stops."""

    signum: int | None = None
    notice: str = ""  # printed when the first signal arrives ("" prints nothing: other ranks)
    first_at: float = 0.0  # time.monotonic() of the first signal
    stopping: bool = False  # stop_now has run: the run is closing

    def handler(self, signum: int, frame: object) -> None:
        now = time.monotonic()
        if self.stopping or (self.signum is not None and now - self.first_at < SAME_REQUEST_S):
            return  # closing already, or a copy of the first signal
        if self.signum is not None:  # the second signal: stop now
            self.signum = signum
            self.stop_now()
        self.signum, self.first_at = signum, now
        if self.notice:
            name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            sys.stderr.write(f"\ngrpo: {name}: {self.notice} ({name} again stops at once)\n")
            sys.stderr.flush()

    def agreed(self, d: eng.Dist) -> bool:
        """Whether any rank was signalled (ranks must stop at the same step)."""
        (flag,) = eng.all_reduce_sum([float(self.signum is not None)], d.device, d.world)
        if flag and self.signum is None:
            self.signum = signal.SIGTERM
        return flag > 0

    def stop_now(self) -> None:
        self.stopping = True
        if self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise Terminated(f"signal {self.signum}")


@contextmanager
def stop_on_signals(notice: str = "") -> Iterator[StopRequest]:
    """Route SIGTERM, SIGINT and SIGUSR2 to a :class:`StopRequest` for the duration.
    Handlers need the main thread; sweep arms run in threads keep the defaults."""
    stop = StopRequest(notice=notice)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, stop.handler) for sig in STOP_SIGNALS}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def stop_notice(save_on_interrupt: bool) -> str:
    """What the user is told when a signal arrives: the wait is the current step."""
    then = "saving a checkpoint" if save_on_interrupt else "no checkpoint " \
        "(trainer.save_on_interrupt=false)"
    return f"finishing the current step, {then}, then stopping"


def stopped_message(run_id: str, last_step: int | None) -> str:
    """The line an interrupted run ends with: how to continue it, or why it cannot be."""
    if last_step is None:
        return (f"grpo: run {run_id} stopped with no checkpoint, so it cannot be resumed "
                "(trainer.save_on_interrupt=true or trainer.save_every=N save one)")
    return (f"grpo: run {run_id} stopped; step {last_step} is saved. Continue with: "
            f"grpo run resume={run_id}")
