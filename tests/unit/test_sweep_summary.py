"""The sweep's closing table: its numbers are the mean of each arm's LAST 10% of steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from grpo_cli.sweep import plan, summarize


def _write_arm(runs: Path, sweep_dir: Path, index: int, run_id: str, steps: int,
               offset: float) -> None:
    (sweep_dir / "arms").mkdir(parents=True, exist_ok=True)
    (sweep_dir / "arms" / f"{index:03d}.json").write_text(
        json.dumps({"index": index, "run_id": run_id, "status": "completed"}))
    run = runs / run_id
    run.mkdir(parents=True)
    lines = [json.dumps({"step": s, "length/mean": offset + s, "length/clip_ratio": s / 100,
                         "reward/mean": -s}) for s in range(steps)]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("steps", [5, 20, 35])
def test_table_averages_the_last_tenth_of_steps(tmp_path: Path, steps: int) -> None:
    sweep = plan(["max_len=16,24"], runs_dir=str(tmp_path))
    for arm, offset in zip(sweep.arms, (100.0, 200.0), strict=True):
        _write_arm(tmp_path, sweep.sweep_dir, arm.index, f"{arm.run_id}-r1", steps, offset)
    rows = summarize(sweep)
    w = max(1, steps // 10)
    last = list(range(steps - w, steps))
    for row, offset in zip(rows, (100.0, 200.0), strict=True):
        assert row["run_id"].endswith("-r1")  # the id the arm ran under, from its status
        assert row["steps"] == steps
        assert row["len"] == pytest.approx(offset + sum(last) / w)
        assert row["clip"] == pytest.approx(sum(last) / w / 100)
        assert row["reward"] == pytest.approx(-sum(last) / w)
