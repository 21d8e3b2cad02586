"""Run store: round trips, crash leftovers, id rules, compact rollouts."""

from __future__ import annotations

import json
import multiprocessing
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from grpo_cli.telemetry.store import (
    RunStore,
    atomic_write_text,
    new_run_id,
    read_metrics,
    read_rollouts,
    resolve_run_dir,
    rollout_parts,
    runs_root,
)


def rollout_columns(step: int, prompts: int = 4, n: int = 8, seed: int = 0,
                    cap: int = 1024) -> dict[str, np.ndarray]:
    """One step of realistic rollouts: lengths up to the cap, 0/1 rewards, GRPO advantages."""
    rng = np.random.default_rng(seed + step)
    rows = prompts * n
    lengths = np.minimum(rng.gamma(4.0, cap / 8, rows).astype(np.int32) + 1, cap)
    truncated = lengths >= cap
    acc = (rng.random(rows) < 0.5).astype(np.float32)
    fmt = (rng.random(rows) < 0.9).astype(np.float32)
    reward = np.where(truncated, 0.0, 0.9 * acc + 0.1 * fmt).astype(np.float32)
    grouped = reward.reshape(prompts, n)
    adv = (grouped - grouped.mean(1, keepdims=True)) / (grouped.std(1, keepdims=True) + 1e-6)
    correct = np.where(truncated, np.nan, acc).astype(np.float32)
    return {
        "step": np.full(rows, step, np.int32),
        "prompt_id": np.repeat(rng.choice(50_000, prompts, replace=False), n).astype(np.int64),
        "sample": np.tile(np.arange(n), prompts).astype(np.int16),
        "response_length": lengths,
        "truncated": truncated,
        "reward": reward,
        "correct": correct,
        "advantage": adv.reshape(-1).astype(np.float32),
        "accuracy": acc,
        "format": fmt,
    }


def test_config_meta_metrics_round_trip(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path, "run-1")
    for sub in ("rollouts", "checkpoints", "wandb"):
        assert (store.path / sub).is_dir()
    assert store.checkpoints_dir == tmp_path / "run-1" / "checkpoints"
    assert store.wandb_dir == tmp_path / "run-1" / "wandb"

    cfg = {"model": {"path": "toy"}, "data": {"max_response_length": 24}, "a": [1, 2]}
    store.write_config(cfg)
    text = (store.path / "config.yaml").read_text()
    assert yaml.safe_load(text) == cfg and text.index("model") < text.index("data")

    store.update_meta(status="running", world_size=np.int64(2))
    store.update_meta(status="completed")
    assert RunStore.open(tmp_path, "run-1").read_meta() == {
        "run_id": "run-1", "status": "completed", "world_size": 2}
    assert not [p for p in store.path.iterdir() if p.name.startswith(".")]  # no temp left

    store.append_metrics({"step": 0, "length/mean": np.float32(3.5), "max_len": np.int64(24),
                          "reward/std": float("nan"), "x": float("inf")})
    store.append_metrics({"step": np.int64(1), "length/mean": 4.0})
    lines = (store.path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == [  # strict JSON, NaN/inf keys dropped
        {"step": 0, "length/mean": 3.5, "max_len": 24}, {"step": 1, "length/mean": 4.0}]
    assert read_metrics(store.path) == [json.loads(x) for x in lines]
    with pytest.raises(ValueError, match="step"):
        store.append_metrics({"length/mean": 1.0})

    store.append_samples([{"step": 0, "prompt": "2+2?", "completion": "4 ✓",
                           "length": np.int32(2)}])
    sample = json.loads((store.path / "samples.jsonl").read_text())
    assert sample == {"step": 0, "prompt": "2+2?", "completion": "4 ✓", "length": 2}


def test_create_refuses_an_existing_run_and_open_needs_one(tmp_path: Path) -> None:
    RunStore.create(tmp_path, "dup")
    with pytest.raises(FileExistsError, match="dup"):
        RunStore.create(tmp_path, "dup")
    with pytest.raises(FileNotFoundError, match=r"'nope'.*" + re.escape(str(tmp_path))):
        RunStore.open(tmp_path, "nope")
    (tmp_path / "half").mkdir()  # a dir without meta.json (e.g. made by hand) can be created
    RunStore.create(tmp_path, "half")


def test_partial_last_metrics_line_is_dropped_and_append_recovers(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path, "r")
    store.append_metrics({"step": 0, "a": 1.0})
    with open(store.path / "metrics.jsonl", "a") as f:
        f.write('{"step": 1, "a": 2.')  # killed mid-write
    assert read_metrics(store.path) == [{"step": 0, "a": 1.0}]

    store.append_metrics({"step": 1, "a": 2.5})  # a resumed writer starts a fresh line
    with pytest.warns(UserWarning, match="unreadable line"):  # the old fragment, mid-file now
        assert read_metrics(store.path) == [{"step": 0, "a": 1.0}, {"step": 1, "a": 2.5}]


def test_rows_logged_twice_for_a_step_are_merged(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path, "r")
    for row in ({"step": 0, "a": 1}, {"step": 1, "a": 2}, {"step": 1, "a": 3, "b": 4},
                {"step": 0, "val/length/mean": 9.0}):
        store.append_metrics(row)
    assert read_metrics(store.path) == [{"step": 0, "a": 1, "val/length/mean": 9.0},
                                        {"step": 1, "a": 3, "b": 4}]
    assert read_metrics(tmp_path / "r") == read_metrics(str(tmp_path / "r"))
    with pytest.raises(FileNotFoundError):
        read_metrics(tmp_path / "missing")
    assert read_metrics(RunStore.create(tmp_path, "empty").path) == []


def test_rollouts_round_trip_with_types_and_nullable_correct(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path, "r")
    steps = [rollout_columns(s) for s in range(3)]
    for cols in steps:
        store.add_rollouts(cols)
    assert rollout_parts(store.path) == []  # below flush_rows: still buffered
    part = store.flush_rollouts()
    assert part is not None and part.name == "part-000000-000002.parquet"
    assert store.flush_rollouts() is None

    df = read_rollouts(store.path)
    expected = pd.DataFrame({k: np.concatenate([c[k] for c in steps]) for k in steps[0]})
    assert list(df.columns) == list(expected.columns)
    dtypes = {"step": "int32", "prompt_id": "int64", "sample": "int16",
              "response_length": "int32", "truncated": "bool", "reward": "float32",
              "correct": "float32", "advantage": "float32", "accuracy": "float32"}
    assert {k: str(df[k].dtype) for k in dtypes} == dtypes
    pd.testing.assert_frame_equal(df, expected, check_dtype=False)
    assert df["correct"].isna().sum() == expected["truncated"].sum()  # unknown = null on disk


def test_auto_flush_and_part_order(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path, "r", flush_rows=64)
    for s in range(5):  # 32 rows per step: a part every 2 steps
        store.add_rollouts(rollout_columns(s))
    names = [p.name for p in rollout_parts(store.path)]
    assert names == ["part-000000-000001.parquet", "part-000002-000003.parquet"]
    store.flush_rollouts()
    store.add_rollouts(rollout_columns(4, seed=9))  # same step again -> a new part, no clobber
    store.flush_rollouts()
    assert [p.name for p in rollout_parts(store.path)][-2:] == [
        "part-000004-000004.parquet", "part-000004-000004-1.parquet"]
    assert read_rollouts(store.path)["step"].tolist() == sorted(
        read_rollouts(store.path)["step"].tolist())
    assert len(read_rollouts(store.path)) == 6 * 32


def test_parts_with_different_components_align(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path, "r")
    a = rollout_columns(0)
    b = {k: v for k, v in rollout_columns(1).items() if k not in ("format", "correct")}
    store.add_rollouts(a)
    store.flush_rollouts()
    store.add_rollouts(b)
    store.flush_rollouts()
    df = read_rollouts(store.path)
    assert len(df) == 64 and df.loc[df["step"] == 1, "format"].isna().all()
    assert df.loc[df["step"] == 1, "correct"].isna().all()


def test_leftovers_of_a_killed_writer_are_ignored(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path, "r")
    store.add_rollouts(rollout_columns(0))
    good = store.flush_rollouts()
    assert good is not None
    data = good.read_bytes()
    # A temp file (killed before the rename) and a truncated part under a final name.
    (store.rollouts_dir / ".part-000001-000001.parquet.x1.tmp").write_bytes(data[: len(data) // 2])
    (store.rollouts_dir / "part-000002-000002.parquet").write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match="part-000002-000002"):
        df = read_rollouts(store.path)
    assert len(df) == 32 and set(df["step"]) == {0}


def test_empty_rollouts_read_as_typed_empty_frame(tmp_path: Path) -> None:
    df = read_rollouts(RunStore.create(tmp_path, "r").path)
    assert len(df) == 0 and "response_length" in df.columns


def test_add_rollouts_validates(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path, "r")
    cols = rollout_columns(0)
    with pytest.raises(ValueError, match="missing"):
        store.add_rollouts({k: v for k, v in cols.items() if k != "reward"})
    with pytest.raises(ValueError, match="equal length"):
        store.add_rollouts({**cols, "reward": cols["reward"][:-1]})
    store.add_rollouts({**cols, "sample": np.full(32, 40_000)})  # would wrap in int16
    with pytest.raises(ValueError, match="sample"):
        store.flush_rollouts()


def test_rollouts_are_compact(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path, "r", flush_rows=10_240)
    for s in range(40):  # 40 steps x 32 prompts x 8 samples = 10,240 rows, one part
        store.add_rollouts(rollout_columns(s, prompts=32, n=8))
    (part,) = rollout_parts(store.path)
    bytes_per_row = part.stat().st_size / 10_240
    assert bytes_per_row < 40, bytes_per_row


def test_run_ids_are_sortable_safe_and_unique() -> None:
    ids = [new_run_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{8}", i) for i in ids)
    assert [i[:15] for i in ids] == sorted(i[:15] for i in ids)


def _ids(_: int) -> list[str]:
    return [new_run_id() for _ in range(500)]


def test_run_ids_unique_across_parallel_processes() -> None:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        batches = pool.map(_ids, range(4))
    ids = [i for b in batches for i in b]
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("bad", ["..", ".", "", "../x", "a/b", "/abs", "a\\b", ".hidden",
                                 "x\x00y"])
def test_path_escaping_ids_are_rejected(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError):
        resolve_run_dir(tmp_path, bad)
    with pytest.raises(ValueError):
        RunStore.create(tmp_path, bad)
    assert resolve_run_dir(tmp_path, "sweep_1-003.r2") == tmp_path / "sweep_1-003.r2"


def test_runs_root_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GRPO_RUNS_DIR", str(tmp_path / "env"))
    assert runs_root(str(tmp_path / "x")) == tmp_path / "x"
    assert runs_root() == tmp_path / "env"
    monkeypatch.delenv("GRPO_RUNS_DIR")
    assert runs_root() == Path("runs")


def test_atomic_write_text_replaces(tmp_path: Path) -> None:
    target = tmp_path / "manifest.json"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two" and [p.name for p in tmp_path.iterdir()] == [target.name]


def test_truncate_after_drops_later_steps_everywhere(tmp_path: Path) -> None:
    """What a resume from step 2's checkpoint does: steps 3.. vanish from metrics, samples
    and rollouts (a part spanning the boundary is cut, a later part removed)."""
    store = RunStore.create(tmp_path, "r", flush_rows=10_000)
    for step in range(6):
        store.append_metrics({"step": step, "length/mean": float(step)})
        store.append_samples([{"step": step, "completion": f"c{step}"}])
        store.add_rollouts(rollout_columns(step))
        if step in (1, 3):
            store.flush_rollouts()  # parts 0-1, 2-3; 4-5 stays buffered, then 4-5 on disk
    store.flush_rollouts()
    with open(tmp_path / "r" / "metrics.jsonl", "ab") as f:
        f.write(b'{"step": 6, "length/me')  # a killed writer's partial line
    store.truncate_after(2)

    assert [m["step"] for m in read_metrics(store.path)] == [0, 1, 2]
    samples = (store.path / "samples.jsonl").read_text().splitlines()
    assert [json.loads(s)["step"] for s in samples] == [0, 1, 2]
    rollouts = read_rollouts(store.path)
    assert sorted(set(rollouts["step"])) == [0, 1, 2]
    assert len(rollouts) == 3 * 32
    assert [p.name for p in rollout_parts(store.path)] == ["part-000000-000001.parquet",
                                                           "part-000002-000003.parquet"]
    store.append_metrics({"step": 3, "length/mean": 9.0})  # the resumed run continues
    assert [m["step"] for m in read_metrics(store.path)] == [0, 1, 2, 3]


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_store_files_follow_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    """Atomic writes go through mkstemp (always 0600); the final files must look like any
    other file the user creates, and nothing is world-writable under a sane umask."""
    import os
    import stat

    old = os.umask(umask)
    try:
        store = RunStore.create(tmp_path, "r")
        created_mode = stat.S_IMODE((store.path / "meta.json").stat().st_mode)
        store.write_config({"seed": 0})
        store.update_meta(status="running")
        store.append_metrics({"step": 0})
        store.add_rollouts(rollout_columns(0))
        store.flush_rollouts()
    finally:
        os.umask(old)
    assert created_mode == mode
    files = [p for p in store.path.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"config.yaml", "meta.json", "metrics.jsonl"}
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == mode, p.name
    for d in [store.path, *[p for p in store.path.rglob("*") if p.is_dir()]]:
        assert not stat.S_IMODE(d.stat().st_mode) & 0o002, d
