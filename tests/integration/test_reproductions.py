"""The length-dynamics reproductions on the embedded default, through the real `grpo sweep`.

Each test runs a shipped sweep file on Hydra's joblib launcher (two arms at a time, the
default 60 steps of 16 prompts x 8 samples; the cap sweep is crossed with two loss modes so
one sweep serves two reproductions) and asserts the direction of the effect with a margin
that held for seeds 0, 1 and 2. The numbers are in each test's docstring, measured with
`grpo sweep sweeps/<file> seed=0,1,2` and `grpo report <sweep-id>`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import yaml

from grpo_cli.telemetry.store import read_metrics
from tests.helpers import run_grpo

pytestmark = pytest.mark.slow


@dataclass
class Arm:
    config: dict  # the arm's resolved config.yaml
    metrics: list[dict]  # metrics.jsonl, one dict per step


def run_sweep(tmp_path_factory: pytest.TempPathFactory, sweep_file: str,
              *overrides: str) -> list[Arm]:
    """Run a shipped sweep file through the CLI; its arms in manifest order."""
    runs_dir = tmp_path_factory.mktemp("runs")
    res = run_grpo(runs_dir, "sweep", f"sweeps/{sweep_file}", "logger.progress=false",
                   *overrides, timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    (manifest,) = (runs_dir / "sweeps").glob("*/manifest.json")
    arms = []
    for arm in json.loads(manifest.read_text())["arms"]:
        run = runs_dir / arm["run_id"]
        arms.append(Arm(yaml.safe_load((run / "config.yaml").read_text()), read_metrics(run)))
    return arms


def mean(metrics: list[dict], key: str, steps: slice) -> float:
    return float(np.mean([m[key] for m in metrics[steps] if key in m]))


FIRST, LAST = slice(0, 10), slice(-10, None)


@pytest.fixture(scope="module")
def cap_by_loss_mode(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[int, str], list]:
    """sweeps/toy_max_len.yaml crossed with two loss modes: 4 arms, the metrics of each by
    (cap, mode). One sweep serves the cap reproduction and the loss-mode one."""
    modes = ("seq-mean-token-mean", "seq-mean-token-sum-norm")
    arms = run_sweep(tmp_path_factory, "toy_max_len.yaml",
                     f"algorithm.loss_agg_mode={','.join(modes)}")
    by_key = {(a.config["data"]["max_response_length"], a.config["algorithm"]["loss_agg_mode"]):
              a.metrics for a in arms}
    assert set(by_key) == {(cap, mode) for cap in (32, 160) for mode in modes}
    return by_key


def test_small_cap_makes_the_policy_short_and_a_large_cap_does_not(cap_by_loss_mode) -> None:
    """The seed's effect. Seeds 0/1/2 (versions of constraints.txt), mean over the first ->
    last 10 steps:
    cap 32: length 23.9->15.8, 23.0->12.8, 23.8->10.9 (-34%, -44%, -54%); clip ratio
    0.54->0.17, 0.46->0.13, 0.53->0.05; natural length (val/length/mean at cap 128, first ->
    last step) 46->12, 34->13, 50->11.
    cap 160: length 47.5->44.8, 40.6->45.1, 46.9->46.1 (-6%, +11%, -2%), clip 0; natural
    length 46->45, 34->35, 50->46; reward 0.62->0.77, 0.64->0.69, 0.61->0.72."""
    small = cap_by_loss_mode[(32, "seq-mean-token-mean")]
    large = cap_by_loss_mode[(160, "seq-mean-token-mean")]

    def change(metrics: list[dict], key: str) -> float:
        return mean(metrics, key, LAST) / mean(metrics, key, FIRST) - 1

    # At 32 a large share is truncated at the start; that share and the length both fall.
    assert mean(small, "length/clip_ratio", FIRST) >= 0.35
    assert change(small, "length/clip_ratio") <= -0.4
    assert change(small, "length/mean") <= -0.2
    # The natural length (generous-cap probe on fixed prompts) collapses too.
    val = [m["val/length/mean"] for m in small if "val/length/mean" in m]
    assert val[-1] <= 0.7 * val[0]
    # At 160 almost nothing is truncated, length holds and reward rises.
    assert mean(large, "length/clip_ratio", FIRST) <= 0.02
    assert change(large, "length/mean") >= -0.15
    assert change(small, "length/mean") <= change(large, "length/mean") - 0.2
    assert change(large, "reward/mean") > 0


def test_overlong_filtering_keeps_the_natural_length_at_the_small_cap(tmp_path_factory) -> None:
    """A remedy: overlong filtering (no loss and no group statistics for truncated answers).
    Natural length (val/length/mean at cap 128), first -> last step, seeds 0/1/2: plain GRPO
    46->12, 34->13, 50->11; filtered 46->50, 34->42, 50->51. Clip ratio over the last 10
    steps: plain 0.17, 0.13, 0.05; filtered 0.62, 0.72, 0.71. Masking only the loss
    (mask_truncated alone) collapsed like plain GRPO when last measured (seed 0: 44->12)."""
    plain, filtered = (a.metrics for a in run_sweep(tmp_path_factory, "toy_overlong_filter.yaml"))
    val_plain = [m["val/length/mean"] for m in plain if "val/length/mean" in m]
    val_filtered = [m["val/length/mean"] for m in filtered if "val/length/mean" in m]
    assert val_filtered[-1] >= 0.9 * val_filtered[0]
    assert val_filtered[-1] >= 1.5 * val_plain[-1]
    assert mean(filtered, "length/clip_ratio", LAST) >= 2 * mean(plain, "length/clip_ratio", LAST)


def gap_growth(metrics: list[dict]) -> float:
    """How much longer incorrect completions got relative to correct ones: the mean of
    (incorrect - correct mean length) over the last 10 steps minus over the first 10."""
    def gap(rows: list[dict]) -> float:
        both = [m for m in rows if "length/incorrect_mean" in m and "length/correct_mean" in m]
        return float(np.mean([m["length/incorrect_mean"] - m["length/correct_mean"]
                              for m in both]))
    return gap(metrics[LAST]) - gap(metrics[FIRST])


def test_per_sequence_normalisation_lets_wrong_answers_grow_longer(cap_by_loss_mode) -> None:
    """Dr. GRPO's length bias at cap 160 (nothing truncated). Growth of the incorrect - correct
    length gap, first -> last 10 steps, seeds 0/1/2, with the versions in constraints.txt:
    seq-mean-token-mean +12.9, +11.1, +12.4 tokens; seq-mean-token-sum-norm +11.8, +9.0, +9.6
    (smallest difference 1.1 tokens; with the libraries of 2026-11-24 it was 14.3/13.9/11.4
    against 7.2/5.4/7.4: the direction held, the size did not)."""
    biased = gap_growth(cap_by_loss_mode[(160, "seq-mean-token-mean")])
    unbiased = gap_growth(cap_by_loss_mode[(160, "seq-mean-token-sum-norm")])
    assert biased > 0
    assert biased >= unbiased + 0.5
