"""Sinks: the store sink, a real offline W&B run read back from its .wandb file, and W&B
failures that must not stop training."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from grpo_cli.telemetry.length_metrics import length_histogram
from grpo_cli.telemetry.sinks import MetricsSink, MultiSink, NoopSink, StoreSink, WandbSink
from grpo_cli.telemetry.store import RunStore, read_metrics
from grpo_cli.telemetry.wandb_files import read_wandb_history


@pytest.fixture(autouse=True)
def _quiet_offline_wandb(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / ".wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / ".wandb-cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / ".wandb-data"))


def test_sinks_satisfy_the_protocol(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path, "r")
    for sink in (NoopSink(), StoreSink(store), WandbSink(None), MultiSink([])):
        assert isinstance(sink, MetricsSink)


def test_store_sink_writes_metrics_and_samples(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path, "r")
    sink = MultiSink([StoreSink(store), NoopSink()])
    hist = length_histogram(np.array([1, 2, 3]), 8)
    sink.log(0, {"length/mean": np.float64(2.0), "reward/std": float("nan")},
             {"length/hist": hist}, [{"prompt": "p", "completion": "c", "length": 2}])
    sink.log(1, {"length/mean": 3.0})
    sink.close("completed")
    assert read_metrics(store.path) == [{"step": 0, "length/mean": 2.0},
                                        {"step": 1, "length/mean": 3.0}]
    samples = [json.loads(x) for x in (store.path / "samples.jsonl").read_text().splitlines()]
    assert samples == [{"step": 0, "prompt": "p", "completion": "c", "length": 2}]


def test_offline_wandb_run_records_scalars_histograms_and_samples(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "wb-run-1"
    run_dir.mkdir(parents=True)
    sink = WandbSink.create(run_id="wb-run-1", run_dir=run_dir, config={"max_len": 64},
                            mode="offline", project="grpo-test", entity=None, group="sweep-a",
                            tags=["max_len=64"])
    assert sink.active
    rng = np.random.default_rng(0)
    batch = 48
    for step in range(3):
        lengths = rng.integers(1, 80, batch)  # some above the cap: counted in the last bin
        sink.log(step, {"length/mean": float(lengths.mean()), "reward/mean": np.float32(step),
                        "corr/reward_length_spearman": float("nan")},
                 {"length/hist": length_histogram(lengths, 64, 16)},
                 [{"prompt": "q", "completion": "a" * 3, "length": np.int64(3),
                   "truncated": False, "reward": 1.0}] if step == 0 else None)
    sink.close("completed")
    assert not sink.active

    (run_file,) = (run_dir / "wandb").glob("offline-run-*/run-wb-run-1.wandb")
    history = read_wandb_history(run_file)
    assert sorted(history) == [0, 1, 2]
    for step, row in history.items():
        assert row["step"] == step and row["reward/mean"] == step
        assert "length/mean" in row and "corr/reward_length_spearman" not in row
        hist = row["length/hist"]
        assert hist["_type"] == "histogram" and sum(hist["values"]) == batch
        assert hist["bins"] == np.linspace(0, 64, 17).tolist()
    assert history[0]["samples"]["_type"] == "table-file" and "samples" not in history[1]


def test_resumed_wandb_run_holds_every_step_once_even_after_a_torn_file(
        tmp_path: Path) -> None:
    """A first process logs steps 0-5 and is 'killed': its .wandb file is cut inside a
    record. The resumed process re-sends what W&B lost from the store's rows and skips
    what it holds, so the two segments of the one run id hold each step exactly once."""
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    first = WandbSink.create(run_id="r", run_dir=run_dir, config={}, mode="offline")
    for step in range(6):
        first.log(step, {"length/mean": float(step)})
    first.close("completed")
    (run_file,) = (run_dir / "wandb").glob("offline-run-*/run-r.wandb")
    whole = read_wandb_history(run_file)
    assert sorted(whole) == list(range(6))
    data = run_file.read_bytes()
    last = data.rindex(b"length/mean")
    run_file.write_bytes(data[:last * 2 // 3])  # torn inside a record, some steps lost
    survived = sorted(read_wandb_history(run_file))
    assert survived == list(range(len(survived))) and len(survived) < 5

    store_rows = [{"step": s, "length/mean": float(s)} for s in range(6)]
    second = WandbSink.create(run_id="r", run_dir=run_dir, config={}, mode="offline",
                              recorded=store_rows)
    assert second.held_through == 5
    second.log(4, {"length/mean": -1.0})  # a redone step W&B already holds: not sent again
    for step in (6, 7):
        second.log(step, {"length/mean": float(step)})
    second.close("completed")
    segments = [read_wandb_history(f)
                for f in sorted((run_dir / "wandb").glob("offline-run-*/run-r.wandb"))]
    assert len(segments) == 2
    steps = sorted(step for seg in segments for step in seg)
    assert steps == list(range(8))
    assert all(row["length/mean"] == step for seg in segments for step, row in seg.items())


def test_wandb_init_failure_never_raises(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        sink = WandbSink.create(run_id="bad", run_dir=tmp_path, config={}, mode="not-a-mode",
                                project=None, entity=None, group=None, tags=[])
    assert not sink.active
    assert sum("W&B init failed" in r.getMessage() for r in caplog.records) == 1
    sink.log(0, {"a": 1.0}, {"h": length_histogram(np.array([1]), 4)})
    sink.close("failed")


def test_wandb_log_failure_warns_once_and_disables(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    sink = WandbSink.create(run_id="bad-hist", run_dir=tmp_path, config={}, mode="offline",
                            project="grpo-test", entity=None, group=None, tags=[])
    assert sink.active
    with caplog.at_level(logging.WARNING):
        # Real W&B error: a histogram whose edges do not match its counts.
        sink.log(0, {"a": 1.0}, {"h": (np.array([1, 2, 3]), np.array([0.0, 1.0]))})
        sink.log(1, {"a": 2.0}, {"h": (np.array([1, 2, 3]), np.array([0.0, 1.0]))})
        sink.close("completed")
    assert not sink.active
    assert sum("W&B log failed" in r.getMessage() for r in caplog.records) == 1


def test_disabled_mode_does_not_start_wandb(tmp_path: Path) -> None:
    sink = WandbSink.create(run_id="off", run_dir=tmp_path, config={}, mode="disabled",
                            project=None, entity=None, group=None, tags=[])
    assert not sink.active
    sink.log(0, {"a": 1.0})
    sink.close("completed")
    assert not (tmp_path / "wandb").exists()


class _FailsToClose:
    """A user-written sink whose close raises (e.g. its disk is gone)."""

    def __init__(self) -> None:
        self.closed = False

    def log(self, step: int, scalars: dict[str, float], histograms: Any = None,
            samples: Any = None) -> None:
        return None

    def close(self, status: str) -> None:
        self.closed = True
        raise OSError("disk full")


def test_multisink_propagates_store_failures_and_closes_every_sink(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path, "r")
    shutil.rmtree(store.path)  # the store is the source of truth: losing it must stop the run
    first, last = _FailsToClose(), _FailsToClose()
    sink = MultiSink([first, StoreSink(store), last])
    with pytest.raises(FileNotFoundError):
        sink.log(0, {"a": 1.0})
    with pytest.raises(OSError, match="disk full"):
        sink.close("failed")
    assert first.closed and last.closed
