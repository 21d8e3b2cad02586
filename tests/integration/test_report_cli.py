"""`grpo report` through the real CLI on real short runs (a `grpo run` and a 2-arm sweep)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from grpo_cli.telemetry.store import read_metrics
from tests.helpers import TINY, run_grpo


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("report_runs")


@pytest.fixture(scope="module")
def run_id(runs: Path) -> str:
    res = run_grpo(runs, "run", *TINY, "trainer.steps=2", "max_len=24", "logger.sample_every=1",
                "logger.wandb.mode=offline")
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout.strip().splitlines()[-1]


def _numbers_in(page: str, *values: float) -> None:
    for v in values:
        assert f"{v:.1f}" in page, v


def test_report_of_a_real_run(runs: Path, run_id: str) -> None:
    res = run_grpo(runs, "report", run_id)
    assert res.returncode == 0, res.stderr[-3000:]
    page_path = Path(res.stdout.strip().splitlines()[-1])
    assert page_path == (runs / "reports" / run_id / "report.html").resolve()
    out = page_path.parent
    for name in ("report.md", "clip_ratio.png", "reward_accuracy.png", "correlation.png",
                 "length_variance.png", "entropy.png", "rollout_tail.png", "correct_incorrect.png",
                 "run00_length.png", "run00_heatmap.png", "run00_km.png"):
        assert (out / name).stat().st_size > 0, name
    page = page_path.read_text()
    # 9 + accuracy by length, length by outcome, reward components and entropy, rollout tail
    assert page.count("data:image/png;base64,") == 13
    # the summary's initial/final lengths are the step means of metrics.jsonl (window: 1 step)
    metrics = read_metrics(runs / run_id)
    _numbers_in(page, metrics[0]["length/mean"], metrics[-1]["length/mean"])
    assert "Too few steps to judge trends" in page  # 2 steps: no trend verdict
    assert "Kaplan" in page and ("recommended cap" in page or "no change needed" in page)
    md = (out / "report.md").read_text()
    assert "## Diagnosis" in md and "| arm | seeds (n) | steps (window) |" in md
    assert "![Clip ratio](clip_ratio.png)" in md
    assert "&lt;" not in md and "&gt;" not in md and "&amp;" not in md


def test_report_window_option(runs: Path, run_id: str, tmp_path: Path) -> None:
    res = run_grpo(runs, "report", run_id, "--window", "1", "--out", str(tmp_path / "w1"))
    assert res.returncode == 0, res.stderr[-3000:]
    md = (tmp_path / "w1" / "report.md").read_text()
    assert "length, first 1 step (tokens)" in md and f"grpo report {run_id} --window 1" in md
    res = run_grpo(runs, "report", run_id, "--window", "ten")
    assert res.returncode == 2 and res.stderr.startswith("error: --window")


def test_report_from_wandb_files_only(runs: Path, run_id: str, tmp_path: Path) -> None:
    (offline,) = (runs / run_id / "wandb").glob("offline-run-*")
    res = run_grpo(runs, "report", str(offline), "--out", str(tmp_path / "wb"))
    assert res.returncode == 0, res.stderr[-3000:]
    page = (tmp_path / "wb" / "report.html").read_text()
    assert "W&amp;B-only run" in page and "no censoring-aware" in page
    assert (tmp_path / "wb" / "run00_heatmap.png").is_file()  # from the logged histograms
    assert not (tmp_path / "wb" / "run00_km.png").exists()
    # a run dir whose metrics.jsonl and rollouts are gone falls back to its W&B files
    copy = runs / "wandb-only-copy"
    shutil.copytree(runs / run_id, copy, symlinks=True)
    (copy / "metrics.jsonl").unlink()
    shutil.rmtree(copy / "rollouts")
    res = run_grpo(runs, "report", "wandb-only-copy", "--out", str(tmp_path / "copy"))
    assert res.returncode == 0, res.stderr[-3000:]
    page = (tmp_path / "copy" / "report.html").read_text()
    assert "offline W&amp;B files" in page
    metrics = read_metrics(runs / run_id)
    _numbers_in(page, metrics[0]["length/mean"])


def test_report_of_a_two_arm_sweep(runs: Path) -> None:
    res = run_grpo(runs, "sweep", "max_len=16,24", *TINY, "trainer.steps=2",
                "logger.wandb.mode=disabled", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    assert res.returncode == 0, res.stderr[-3000:]
    (manifest,) = (runs / "sweeps").glob("*/manifest.json")
    sweep_id = manifest.parent.name
    res = run_grpo(runs, "report", sweep_id)
    assert res.returncode == 0, res.stderr[-3000:]
    out = runs / "reports" / sweep_id
    page = (out / "report.html").read_text()
    assert (out / "length_mean.png").is_file() and (out / "run01_heatmap.png").is_file()
    for arm in json.loads(manifest.read_text())["arms"]:
        assert arm["run_id"] in page
    assert "max_len=16" in page and "max_len=24" in page  # arms labelled by what differs
    summary = page.split("<h2>Summary</h2>")[1].split("<h2>")[0]
    assert len(re.findall(r"<tr><td>max_len=", summary)) == 4  # 2 summary tables x 2 arms
    assert "<h2>Between-arm comparison</h2>" in page
    assert "cannot be tested: n = 1 and 1 seeds" in page  # one seed per arm: no Welch test


@pytest.mark.parametrize("target", ["no-such-run", "../etc", "wandb:missing-parts"])
def test_bad_targets_fail_with_one_line(runs: Path, target: str) -> None:
    res = run_grpo(runs, "report", target)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert res.stderr.startswith("error: ")
