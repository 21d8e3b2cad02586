"""Metrics sinks: one interface for the run store, W&B, and nothing (non-zero ranks).

The store is the source of truth; W&B is a view of it. So a W&B failure (bad settings, a full
disk under wandb/, a network problem in online mode) warns once and disables the W&B sink,
while a store failure propagates and stops the run.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from grpo_cli.telemetry.store import RunStore

log = logging.getLogger(__name__)

Histograms = dict[str, tuple[np.ndarray, np.ndarray]]
SAMPLE_COLUMNS = ("prompt", "completion", "length", "truncated", "reward")
_EXIT_CODES = {"completed": 0, "failed": 1, "interrupted": 130}


@runtime_checkable
class MetricsSink(Protocol):
    def log(
        self,
        step: int,
        scalars: dict[str, float],
        histograms: Histograms | None = None,
        samples: list[dict] | None = None,
    ) -> None: ...

    def close(self, status: str) -> None:
        """End the sink; ``status`` is ``completed``, ``failed`` or ``interrupted``."""
        ...


class NoopSink:
    """For non-zero ranks and disabled logging, so callers never branch on rank."""

    def log(self, step: int, scalars: dict[str, float], histograms: Histograms | None = None,
            samples: list[dict] | None = None) -> None:
        return None

    def close(self, status: str) -> None:
        return None


class StoreSink:
    """Scalars -> metrics.jsonl, samples -> samples.jsonl.

    Histograms are not stored: they are recomputable from the rollout parts. The store's
    owner (not this sink) flushes rollouts and records the final status in meta.json.
    """

    def __init__(self, store: RunStore) -> None:
        self.store = store

    def log(self, step: int, scalars: dict[str, float], histograms: Histograms | None = None,
            samples: list[dict] | None = None) -> None:
        self.store.append_metrics(
            {"step": int(step), **{k: v for k, v in scalars.items() if k != "step"}})
        if samples:
            self.store.append_samples([{"step": int(step), **s} for s in samples])

    def close(self, status: str) -> None:
        return None


class WandbSink:
    """Logs to a W&B run; any W&B error warns once and turns the sink into a no-op."""

    def __init__(self, run: Any | None, held_through: int | None = None) -> None:
        self._run = run
        # W&B history is append-only: after a resume, steps an earlier process already
        # logged (up to this one) are not sent again; the run store holds the redone steps.
        self.held_through = held_through
        self.sent: int | None = None  # the newest step handed to W&B
        self.files: tuple[Path, str] | None = None  # (wandb dir, run id): where it lands

    @property
    def active(self) -> bool:
        return self._run is not None

    @classmethod
    def create(
        cls,
        run_id: str,
        run_dir: Path | str,
        config: dict[str, Any],
        mode: str = "offline",
        project: str | None = None,
        entity: str | None = None,
        group: str | None = None,
        tags: Sequence[str] = (),
        recorded: Sequence[dict[str, Any]] = (),
    ) -> WandbSink:
        """Start (or resume) W&B run ``run_id`` with its files under ``run_dir/wandb``.

        On resume, ``recorded`` holds the store's metrics rows from before: the rows W&B
        missed (a process killed before W&B flushed them) are sent first, so W&B ends up with
        every step exactly once, like the store.

        Never raises: if W&B cannot start, the run goes on with the store alone. The API key
        is left to W&B's own login mechanisms and never passed or written here.
        """
        if mode == "disabled":
            return cls(None)
        try:
            import wandb  # slow import: only when W&B is actually used

            from grpo_cli.telemetry.wandb_files import last_logged_step

            held = last_logged_step(Path(run_dir) / "wandb", run_id)

            run = wandb.init(
                id=run_id, dir=str(run_dir), mode=mode, config=config, group=group,
                tags=list(tags), project=project, entity=entity, resume="allow",
                settings=wandb.Settings(**wandb_output_settings(mode)),
            )
        except Exception as e:  # any W&B failure must not stop training
            _warn_disabled("init", e)
            return cls(None)
        sink = cls(run, held)
        sink.files = (Path(run_dir) / "wandb", run_id)
        try:
            # The training step is the x-axis of every chart (steps numbered from 0).
            run.define_metric("step")
            run.define_metric("*", step_metric="step")
        except Exception as e:
            sink._disable("define_metric", e)
        missed = [row for row in recorded if held is None or row["step"] > held]
        for row in missed:
            sink.log(row["step"], {k: v for k, v in row.items() if k != "step"})
        if held is not None or missed:
            sink.held_through = max([held if held is not None else -1]
                                    + [row["step"] for row in missed])
            log.info("W&B run %s holds steps up to %d (%d sent again from the run store); "
                     "later steps follow", run_id, sink.held_through, len(missed))
        return sink

    def log(self, step: int, scalars: dict[str, float], histograms: Histograms | None = None,
            samples: list[dict] | None = None) -> None:
        if self._run is None or (self.held_through is not None and step <= self.held_through):
            return
        try:
            import wandb

            payload: dict[str, Any] = {"step": int(step)}
            for key, value in scalars.items():
                number = _finite(value)
                if number is not None:
                    payload[key] = number
            for key, (counts, edges) in (histograms or {}).items():
                payload[key] = wandb.Histogram(
                    np_histogram=(np.asarray(counts).tolist(), np.asarray(edges).tolist()))
            if samples:
                rows = [[_plain(s.get(c)) for c in SAMPLE_COLUMNS] for s in samples]
                payload["samples"] = wandb.Table(columns=list(SAMPLE_COLUMNS), data=rows)
            self._run.log(payload, step=int(step))
            self.sent = int(step)
        except Exception as e:
            self._disable("log", e)

    def close(self, status: str) -> None:
        if self._run is None:
            return
        try:
            self._run.summary["status"] = status
            self._run.finish(exit_code=_EXIT_CODES.get(status, 1))
        except Exception as e:
            self._disable("finish", e)
        self._run = None
        self._wait_for_records()

    def _wait_for_records(self, timeout_s: float = 15.0) -> None:
        """W&B's service may still be writing the run file when ``finish`` returns (seen in
        about 1 in 10 offline runs); wait, bounded, until it holds the last step sent, so a
        reader (``grpo report`` of the W&B dir, a resume) right after sees every step."""
        if self.files is None or self.sent is None:
            return
        import time

        from grpo_cli.telemetry.wandb_files import last_logged_step

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            held = last_logged_step(*self.files)
            if held is not None and held >= self.sent:
                return
            time.sleep(0.05)
        log.warning("W&B's run file under %s does not hold step %d yet", self.files[0],
                    self.sent)

    def _disable(self, what: str, error: Exception) -> None:
        _warn_disabled(what, error)
        run, self._run = self._run, None
        try:  # release W&B's background service; errors here are moot
            run.finish(exit_code=1)
        except Exception:
            pass


def wandb_output_settings(mode: str, env: Mapping[str, str] | None = None) -> dict[str, bool]:
    """What W&B itself prints: offline, nothing (no banner, no ~30-line summary; the run's
    files under wandb/ are written and syncable all the same, and the run prints its own
    progress and result); online, only the run's URL (``quiet``). A W&B failure still
    reaches the user as this sink's one warning. WANDB_SILENT / WANDB_QUIET, when set,
    decide instead."""
    env = os.environ if env is None else env
    if "WANDB_SILENT" in env or "WANDB_QUIET" in env:
        return {}
    return {"silent": True} if mode == "offline" else {"quiet": True}


def _warn_disabled(what: str, error: Exception) -> None:
    first_line = (str(error).splitlines() or [""])[0][:300]
    log.warning("W&B %s failed (%s: %s); continuing without W&B, the run store still records "
                "everything", what, type(error).__name__, first_line)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _finite(value: Any) -> float | int | None:
    """A plain finite number, or None (W&B gets no NaN/inf, matching metrics.jsonl)."""
    if isinstance(value, np.generic):
        value = value.item()
    if not isinstance(value, int | float):  # bools are ints: kept, as in metrics.jsonl
        return None
    return value if math.isfinite(value) else None


class MultiSink:
    """Fans out to several sinks; ``close`` closes all even if one raises."""

    def __init__(self, sinks: Sequence[MetricsSink]) -> None:
        self.sinks = list(sinks)

    def log(self, step: int, scalars: dict[str, float], histograms: Histograms | None = None,
            samples: list[dict] | None = None) -> None:
        for sink in self.sinks:
            sink.log(step, scalars, histograms, samples)

    def close(self, status: str) -> None:
        first: BaseException | None = None
        for sink in self.sinks:
            try:
                sink.close(status)
            except Exception as e:  # close the rest, then re-raise
                first = first or e
        if first is not None:
            raise first
