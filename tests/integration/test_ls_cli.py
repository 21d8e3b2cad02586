"""`grpo ls` through the real CLI on real short runs: a 2-arm sweep (one arm fails) and a run
stopped with Ctrl-C, both named; then copies with broken files, an empty root, a missing one."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import TINY, Gate, run_grpo, start_grpo

HEADER = ["id", "name", "status", "steps", "model", "data", "cap", "len", "clip", "reward"]
FOOTER = "len, clip, reward: means over the last 10% of each run's steps"


@dataclass
class Store:
    root: Path
    sweep_id: str
    arms: list[str]  # run ids, arm order
    run_id: str  # the interrupted run, started after the sweep


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    root = tmp_path_factory.mktemp("ls") / "runs"
    bad = root.parent / "bad.py"
    bad.write_text("def fn(batch):\n    raise ValueError('boom')\n")
    res = run_grpo(root, "sweep", f"reward.function={bad}:fn,grpo_cli.rewards.math:compute_score",
                   *TINY, "trainer.steps=2", "max_len=16", "name=capsweep",
                   "logger.wandb.mode=disabled")
    assert res.returncode == 1, res.stderr[-3000:]  # arm 0 failed, arm 1 completed
    (manifest,) = (root / "sweeps").glob("*/manifest.json")
    arms = [a["run_id"] for a in json.loads(manifest.read_text())["arms"]]
    gate = Gate(root.parent, at=4)  # interrupted while step 3 scores (no probe)
    proc = start_grpo(root, "run", *TINY, "trainer.steps=500", "max_len=24", "name=probe",
                      "logger.wandb.mode=disabled", "trainer.save_on_interrupt=false",
                      "trainer.val_every=0", gate.reward,
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    gate.wait(proc)
    proc.send_signal(signal.SIGINT)
    gate.open()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    (run,) = [p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("sweep")]
    return Store(root, manifest.parent.name, arms, run)


def expected(run_dir: Path) -> list[str]:
    """len / clip / reward recomputed from metrics.jsonl: means over the last 10% of steps."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = rows[-max(1, len(rows) // 10):]
    means = [sum(r[k] for r in last) / len(last)
             for k in ("length/mean", "length/clip_ratio", "reward/mean")]
    return [f"{means[0]:.1f}", f"{means[1]:.3f}", f"{means[2]:.3f}"]


def steps_of(run_dir: Path) -> int:
    return len((run_dir / "metrics.jsonl").read_text().splitlines())


def listing(root: Path, *args: str, env: dict[str, str] | None = None) -> list[str]:
    """`grpo ls ARGS` output lines, the header (checked) first, footer and notes included."""
    res = run_grpo(root, "ls", *args, timeout=120, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    lines = res.stdout.rstrip("\n").splitlines()
    assert lines[0].split() == HEADER, res.stdout
    return lines


def table_rows(lines: list[str]) -> list[str]:
    """The rows of the table: after the header, before the footer and notes."""
    return [line for line in lines[1:] if not line.startswith(("len, clip", "note:", "..."))]


def test_runs_and_sweeps_newest_first_arms_under_their_sweep(store: Store) -> None:
    lines = listing(store.root)  # the root from $GRPO_RUNS_DIR
    rows = table_rows(lines)
    assert len(rows) == 4, lines
    run_dir = store.root / store.run_id
    n = steps_of(run_dir)
    assert n >= 3
    assert rows[0].split() == [store.run_id, "probe", "interrupted", f"{n}/500", "toy",
                               "toy:add", "24", *expected(run_dir)]
    assert rows[1].split() == [store.sweep_id, "capsweep", "failed", "1/2", "arms"]
    arm0, arm1 = (store.root / a for a in store.arms)
    assert rows[2].startswith("  ") and rows[3].startswith("  ")  # indented under the sweep
    assert rows[2].split() == [arm0.name, "capsweep", "failed", "0/2", "toy", "toy:add", "16",
                               "-", "-", "-"]
    assert rows[3].split() == [arm1.name, "capsweep", "completed", "2/2", "toy", "toy:add",
                               "16", *expected(arm1)]
    assert lines[-1].startswith(FOOTER)
    # columns line up: every field starts where its header does
    header = lines[0]
    for row in rows[:1] + rows[2:]:
        starts = [i for i in range(len(row)) if row[i] != " " and (i == 0 or row[i - 1] == " ")]
        heads = [header.index(h) for h in HEADER]
        assert starts[1:] == heads[1:], (row, header)


def test_filters_and_limit(store: Store) -> None:
    flat = table_rows(listing(store.root, "--runs"))
    # every run, arms included, newest first by start time; no sweep row, no indent
    assert [r.split()[0] for r in flat] == [store.run_id, store.arms[1], store.arms[0]]
    assert not any(r.startswith(" ") for r in flat)
    sweeps = table_rows(listing(store.root, "--sweeps"))
    assert [r.split()[0] for r in sweeps] == [store.sweep_id, *store.arms]
    lines = listing(store.root, "-n", "1")
    assert [r.split()[0] for r in table_rows(lines)] == [store.run_id]
    assert "... 1 older not shown (raise -n/--limit)" in lines


def test_runs_dir_option_window_and_broken_run_dirs(store: Store, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(store.root / store.run_id, other / "copy",
                    ignore=shutil.ignore_patterns("checkpoints", "wandb", "rollouts"))
    long = other / "long"  # 25 steps: the final numbers are the mean of the last 2
    long.mkdir()
    (long / "meta.json").write_text(json.dumps({"status": "completed", "name": "hand"}))
    (long / "config.yaml").write_text(  # one's own model and data: listed by file name
        "trainer:\n  steps: 30\ndata:\n  max_response_length: 64\n"
        "  train_files: /data/mine/train.jsonl\nmodel:\n  path: ./ckpt/qwen-1.5b/\n")
    (long / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "length/mean": 10 + s, "length/clip_ratio": s / 100,
                    "reward/mean": s / 50}) + "\n" for s in range(25)))
    (other / "no-meta").mkdir()
    (other / "no-meta" / "metrics.jsonl").write_text('garbage\n{"step": 0, "length/mean": 5}\n')
    (other / "bad-meta").mkdir()
    (other / "bad-meta" / "meta.json").write_text("{oops")
    (other / "reports").mkdir()  # report folders are not runs
    (other / "stray.txt").write_text("not a run")
    lines = listing(other, "--runs-dir", str(other),
                    env={"GRPO_RUNS_DIR": str(tmp_path / "elsewhere")})
    rows = {r.split()[0]: r.split() for r in table_rows(lines)}
    assert set(rows) == {"copy", "long", "no-meta", "bad-meta"}
    assert rows["long"][1:] == ["hand", "completed", "25/30", "qwen-1.5b", "train.jsonl", "64",
                                *expected(long)]
    assert expected(long) == ["33.5", "0.235", "0.470"]  # steps 23 and 24
    assert rows["copy"][1:3] == ["probe", "interrupted"]
    assert rows["no-meta"][1:] == ["-", "?", "1/?", "-", "-", "-", "5.0", "-", "-"]
    assert rows["bad-meta"][1:] == ["-", "?", "0/?", "-", "-", "-", "-", "-", "-"]
    notes = [line for line in lines if line.startswith("note:")]
    assert "note: no-meta: no meta.json; 1 unreadable metrics.jsonl line(s) skipped" in notes
    assert "note: bad-meta: meta.json unreadable (JSONDecodeError)" in notes


def test_empty_root_says_so_in_one_line(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    (root / "reports").mkdir(parents=True)
    res = run_grpo(root, "ls", timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout == f"no runs under {root.resolve()}\n"
    res = run_grpo(root, "ls", "--sweeps", timeout=120)
    assert res.stdout == f"no sweeps under {root.resolve()}\n"


def test_missing_root_is_one_error_line_exit_2(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    res = run_grpo(missing, "ls", timeout=120)
    assert res.returncode == 2 and res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: runs root "), res.stderr
    assert str(missing.resolve()) in lines[0]
