"""Per-step aggregation of rollout rows (numpy, vectorised) against a pandas recomputation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from grpo_cli.report.aggregate import rollout_heatmap, rollout_step_table, window
from grpo_cli.report.load import Rollouts
from grpo_cli.telemetry.length_metrics import grouped_percentiles


def _rollouts(seed: int = 0, steps: int = 7, per_step: int = 33) -> Rollouts:
    rng = np.random.default_rng(seed)
    n = steps * per_step
    step = np.repeat(np.arange(steps), per_step)
    rng.shuffle(step)  # parts need not be ordered
    length = rng.integers(1, 41, n).astype(np.int32)
    truncated = length == 40
    correct = rng.choice([0.0, 1.0, np.nan], n).astype(np.float32)
    reward = np.where(truncated, 0.0, rng.random(n)).astype(np.float32)
    prompt = rng.integers(0, 5, n)
    return Rollouts(step.astype(np.int64), length, truncated, reward, correct, prompt)


def test_step_table_matches_pandas() -> None:
    r = _rollouts()
    got = rollout_step_table(r)
    df = pd.DataFrame({"step": r.step, "len": r.length.astype(float), "trunc": r.truncated,
                       "reward": r.reward.astype(float), "correct": r.correct.astype(float),
                       "prompt": r.prompt_id})
    for step, rows in df.groupby("step"):
        row = got.loc[step]
        assert row["completions"] == len(rows)
        assert row["length/mean"] == pytest.approx(rows["len"].mean())
        assert row["length/clip_ratio"] == pytest.approx(rows["trunc"].mean())
        assert row["reward/mean"] == pytest.approx(rows["reward"].mean())
        assert row["reward/std"] == pytest.approx(rows["reward"].std(ddof=0), abs=1e-6)
        known = rows.dropna(subset=["correct"])
        assert row["accuracy"] == pytest.approx((known["correct"] >= 0.5).mean())
        assert row["length/correct_mean"] == pytest.approx(
            known.loc[known["correct"] >= 0.5, "len"].mean())
        assert row["length/incorrect_mean"] == pytest.approx(
            known.loc[known["correct"] < 0.5, "len"].mean())
        trunc = rows[rows["trunc"]]
        expected = trunc["reward"].mean() if len(trunc) else np.nan
        assert row["reward/truncated_mean"] == pytest.approx(expected, nan_ok=True)
        for q in (10, 50, 90):
            assert row[f"length/p{q}"] == pytest.approx(np.percentile(rows["len"], q))
        group_mean = rows.groupby("prompt")["len"].transform("mean")
        assert row["length/between_prompt_frac"] == pytest.approx(
            group_mean.var(ddof=0) / rows["len"].var(ddof=0))
        assert row["length/within_group_std"] == pytest.approx(
            np.sqrt(((rows["len"] - group_mean) ** 2).mean()))
        assert row["length/max"] == rows["len"].max()


def test_step_table_without_prompt_ids_has_no_variance_split() -> None:
    r = _rollouts()
    r.prompt_id = None  # a hand-built store: the split needs the prompt groups
    got = rollout_step_table(r)
    assert "length/between_prompt_frac" not in got and "length/mean" in got


def test_grouped_percentiles_single_row_groups() -> None:
    out = grouped_percentiles(np.array([0, 1, 1]), np.array([5.0, 1.0, 3.0]), (50,), 2)
    assert out[50].tolist() == [5.0, 2.0]


def test_heatmap_shares_sum_to_one_and_the_cap_tops_its_bin() -> None:
    r = _rollouts(steps=5)
    h = rollout_heatmap(r, np.full(5, 40.0))
    assert h.share.shape == (len(h.edges) - 1, 5)
    assert np.allclose(h.share.sum(axis=0), 1.0)
    assert 40 + h.cap_offset in h.edges  # the cap line is a bin edge, not inside a bin
    width = int(h.edges[1] - h.edges[0])
    for j, step in enumerate(h.steps):  # the last bin holds the lengths 40-width+1 .. 40
        rows = r.length[r.step == step]
        assert h.share[-1, j] == pytest.approx(np.mean(rows > 40 - width))


@pytest.mark.parametrize(("n", "w"), [(1, 1), (9, 1), (12, 1), (20, 2), (2000, 200)])
def test_window_is_ten_percent_at_least_one(n: int, w: int) -> None:
    assert window(n) == w


def test_a_runs_table_has_longest_over_median_and_its_tail_share() -> None:
    """From rows alone (an old store) the longest completion comes from the rows; the logged
    tail share passes through; the ratio is longest / median per step."""
    from grpo_cli.report.aggregate import step_table
    from grpo_cli.report.load import RunData

    r = _rollouts()
    metrics = pd.DataFrame({"perf/rollout_tail_frac": np.linspace(0.0, 0.3, 7)},
                           index=pd.Index(np.arange(7), name="step"))
    run = RunData(run_id="x", source="store", path=None, config={}, meta={},
                  metrics=metrics, rollouts=r)
    got = step_table(run)
    df = pd.DataFrame({"step": r.step, "len": r.length.astype(float)})
    by = df.groupby("step")["len"]
    assert np.allclose(got["length/max_over_median"], by.max() / by.median())
    assert np.allclose(got["perf/rollout_tail_frac"], np.linspace(0.0, 0.3, 7))
