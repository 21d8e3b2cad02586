"""The split length histograms of a real short run: `length/hist_correct` and
`length/hist_incorrect` in the offline W&B history add up to `length/hist` at every step and
equal a recomputation from the rollout rows; the probe's `val/length/hist` appears on probe
steps; and `grpo report --format svg,pdf` of the run draws every figure in both formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from grpo_cli.telemetry.store import read_metrics, read_rollouts
from grpo_cli.telemetry.wandb_files import find_run_file, read_wandb_history
from tests.helpers import TINY, check_pages, check_pdf, run_grpo, run_id_of

STEPS, CAP, VAL_EVERY = 3, 24, 2


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    runs = tmp_path_factory.mktemp("hist_runs")
    res = run_grpo(runs, "run", *TINY, f"trainer.steps={STEPS}", f"max_len={CAP}",
                   f"trainer.val_every={VAL_EVERY}", "logger.wandb.mode=offline",
                   "+reward.kwargs.format_weight=0.5")
    return runs, run_id_of(res)


def test_split_histograms_add_up_and_match_the_rollouts(run: tuple[Path, str]) -> None:
    runs, run_id = run
    history = read_wandb_history(find_run_file(runs / run_id))
    rollouts = read_rollouts(runs / run_id)
    metrics = {m["step"]: m for m in read_metrics(runs / run_id)}
    assert sorted(history) == list(range(STEPS))
    for step, row in history.items():
        whole, right, wrong = (row[f"length/hist{s}"] for s in ("", "_correct", "_incorrect"))
        assert whole["bins"] == right["bins"] == wrong["bins"]
        assert np.add(right["values"], wrong["values"]).tolist() == whole["values"]
        rows = rollouts[rollouts["step"] == step]
        edges = np.asarray(whole["bins"])
        assert edges[0] == 0 and edges[-1] == CAP
        lengths = rows["response_length"].clip(upper=CAP).to_numpy(float)
        ok = rows["correct"].to_numpy(float) >= 0.5
        assert np.histogram(lengths[ok], edges)[0].tolist() == right["values"]
        assert np.histogram(lengths[~ok], edges)[0].tolist() == wrong["values"]
        # the store keeps scalars only (histograms are recomputable from the rollouts)
        assert not any(k.startswith(("length/hist", "val/length/hist")) for k in metrics[step])


def test_probe_histogram_on_probe_steps(run: tuple[Path, str]) -> None:
    runs, run_id = run
    history = read_wandb_history(find_run_file(runs / run_id))
    metrics = {m["step"]: m for m in read_metrics(runs / run_id)}
    probed = [s for s, m in metrics.items() if "val/length/mean" in m]
    assert probed == [0, 2]  # every val_every steps and the last
    for step, row in history.items():
        if step not in probed:
            assert "val/length/hist" not in row
            continue
        hist = row["val/length/hist"]
        split = np.add(row["val/length/hist_correct"]["values"],
                       row["val/length/hist_incorrect"]["values"])
        assert split.tolist() == hist["values"]
        assert hist["bins"][0] == 0 and hist["bins"][-1] >= CAP  # the probe's generous cap
        counts = np.asarray(hist["values"])
        mids = (np.asarray(hist["bins"][:-1]) + np.asarray(hist["bins"][1:])) / 2
        assert counts.sum() > 0
        width = hist["bins"][1] - hist["bins"][0]  # the mean from the histogram, within a bin
        assert abs((counts * mids).sum() / counts.sum()
                   - metrics[step]["val/length/mean"]) <= width


def test_vector_report_of_the_run(run: tuple[Path, str], tmp_path: Path) -> None:
    runs, run_id = run
    res = run_grpo(runs, "report", run_id, "--format", "svg,pdf", "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr[-3000:]
    linked = check_pages(tmp_path)
    stems = {Path(n).stem for n in linked}
    # a real run records policy/entropy and the `format` component: drawn; and the
    # reward (accuracy + format bonus) is not the accuracy, so two panels
    assert {"components_entropy", "accuracy_by_length", "run00_outcomes"} <= stems
    page = (tmp_path / "report.html").read_text()
    assert "Reward and accuracy" in page
    for stem in stems:
        check_pdf((tmp_path / f"{stem}.pdf").read_bytes())
    res = run_grpo(runs, "report", run_id, "--format", "svg,gif", "--out", str(tmp_path))
    assert res.returncode == 2 and res.stderr.startswith("error: --format")
