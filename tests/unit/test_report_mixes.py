"""A report over any mix of runs the project wrote renders every section and names what is
missing instead of failing: arms recording different reward components, runs of different
lengths, a run that failed at step 3, one still running, and one from an older store
(rollout rows without prompt ids or grades, metrics without the correlations or the length
variance split). Synthetic stores through the real RunStore, rendered with the real figures."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from grpo_cli.report import build_report
from grpo_cli.report.synthetic import write_synthetic_run

SECTIONS = ("## Data notes", "## Between-arm comparison", "## Diagnosis", "## Summary",
            "## Length without the cap", "## Figures", "## Per-seed detail")


def _edit_metrics(run: Path, edit) -> None:
    path = run / "metrics.jsonl"
    rows = [edit(json.loads(line)) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _edit_meta(run: Path, **changes: object) -> None:
    meta = json.loads((run / "meta.json").read_text())
    meta.update(changes)
    meta.pop("end_time", None)
    (run / "meta.json").write_text(json.dumps(meta))


@pytest.fixture()
def mix(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    for run_id, pattern, steps, seed, component in (
            ("penalty", "collapse", 20, 0, "length_penalty"),
            ("formatted", "healthy", 40, 0, "format")):
        run = write_synthetic_run(root, run_id, pattern, steps=steps, seed=seed)
        _edit_metrics(run, lambda r, c=component: {**r, f"reward/{c}_mean": 0.1})
    _edit_meta(write_synthetic_run(root, "failed", "collapse", steps=3, seed=1),
               status="failed", error="CUDA out of memory")
    _edit_meta(write_synthetic_run(root, "running", "healthy", steps=5, seed=1),
               status="running")
    old = write_synthetic_run(root, "old", "collapse", steps=20, seed=2)
    for part in (old / "rollouts").rglob("*.parquet"):
        pd.read_parquet(part).drop(columns=["prompt_id", "correct"]).to_parquet(part)
    _edit_metrics(old, lambda r: {k: v for k, v in r.items()
                                  if not k.startswith("corr/") and "group" not in k
                                  and "between" not in k and "correct" not in k})
    return root


def test_every_section_renders_and_what_is_missing_is_named(mix: Path, tmp_path: Path) -> None:
    out = build_report(["penalty", "formatted", "failed", "running", "old"], runs_dir=mix,
                       out=tmp_path / "report")
    md = (out / "report.md").read_text()
    for section in SECTIONS:
        assert section in md, section
    notes = md.split("## Data notes", 1)[1].split("\n## ", 1)[0]
    assert "failed after 3 recorded step(s): CUDA out of memory" in notes
    assert "running: 5 step(s) recorded so far" in notes
    assert "without prompt ids" in notes
    # both components are drawn, each where its run recorded it
    assert (out / "components_entropy.png").stat().st_size > 0
    # runs with prompt ids give the length-variance figure; the older one is left out of it
    assert (out / "length_variance.png").stat().st_size > 0
    # every run is in the per-seed detail, the failed and running ones marked
    detail = md.split("## Per-seed detail", 1)[1]
    assert re.search(r"seed=1 \(failed\) \| 3 \(window 1\)", detail)
    assert re.search(r"seed=1 \(running\) \| 5 \(window 1\)", detail)
    # every figure the page names exists and is non-empty
    for name in re.findall(r"\]\(([\w.]+\.png)\)", md):
        assert (out / name).stat().st_size > 0, name
    assert "nan" not in md.lower().replace("nano", "")
