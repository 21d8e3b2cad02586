"""Length telemetry: hand-computed batches, scipy cross-checks, degenerate cases omit keys."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from grpo_cli.telemetry.length_metrics import (
    budget_metrics,
    entropy_metrics,
    grouped_variance_split,
    length_control_metrics,
    length_histogram,
    step_length_metrics,
)

ALWAYS = {"max_len", "length/mean", "length/std", "length/min", "length/max", "length/p10",
          "length/p50", "length/p90", "length/p99", "length/clip_ratio", "reward/mean",
          "reward/std", "length/within_group_std"}


def metrics(lengths, truncated, rewards, groups, correct=None, max_len=10):
    return step_length_metrics(np.asarray(lengths), np.asarray(truncated, dtype=bool),
                               np.asarray(rewards, dtype=float), np.asarray(groups),
                               None if correct is None else np.asarray(correct, dtype=float),
                               max_len)


def test_hand_computed_batch() -> None:
    # Two groups of 3. Group 0: longer -> lower reward; group 1: longer -> higher reward.
    m = metrics(lengths=[2, 4, 10, 3, 6, 9], truncated=[0, 0, 1, 0, 0, 0],
                rewards=[1, 0.5, 0, 0, 0.5, 1], groups=[0, 0, 0, 1, 1, 1],
                correct=[1, 1, 0, 0, np.nan, 1], max_len=10)
    assert m["length/mean"] == pytest.approx(34 / 6)
    assert m["length/std"] == pytest.approx(np.sqrt(np.mean((np.array(
        [2, 4, 10, 3, 6, 9]) - 34 / 6) ** 2)))  # population std
    assert (m["length/min"], m["length/max"]) == (2, 10)
    assert m["length/p50"] == pytest.approx(5.0)
    assert m["length/clip_ratio"] == pytest.approx(1 / 6)
    assert m["length/terminated_mean"] == pytest.approx((2 + 4 + 3 + 6 + 9) / 5)
    assert m["length/correct_mean"] == pytest.approx((2 + 4 + 9) / 3)
    assert m["length/incorrect_mean"] == pytest.approx((10 + 3) / 2)  # NaN = unknown, left out
    assert m["reward/mean"] == pytest.approx(0.5)
    assert m["reward/truncated_mean"] == 0.0  # defined (one truncated sample), truly zero
    assert m["corr/within_group_spearman"] == pytest.approx(0.0)  # -1 and +1
    assert m["corr/within_group_count"] == 2
    # group means 16/3 and 6 around 34/6: between = 1/9, total = 80/9 (population)
    assert m["length/between_prompt_frac"] == pytest.approx(1 / 80)
    assert m["length/within_group_std"] == pytest.approx(np.sqrt(79 / 9))
    assert m["max_len"] == 10
    assert all(np.isfinite(v) for v in m.values())


def test_matches_numpy_and_scipy_on_a_realistic_batch() -> None:
    rng = np.random.default_rng(1)
    n, g, cap = 512, 8, 1024
    lengths = rng.integers(1, cap + 1, n)
    lengths[rng.random(n) < 0.15] = cap
    truncated = (lengths == cap) & (rng.random(n) < 0.9)  # some end with EOS at the cap
    rewards = rng.integers(0, 3, n) / 2.0  # many ties
    groups = rng.permutation(np.repeat(np.arange(n // g) * 7 + 3, g))  # sparse, shuffled ids
    correct = np.where(rng.random(n) < 0.2, np.nan, (rewards > 0.5).astype(float))

    m = step_length_metrics(lengths, truncated, rewards, groups, correct, cap)
    p = np.percentile(lengths, [10, 50, 90, 99])
    assert [m[f"length/p{q}"] for q in (10, 50, 90, 99)] == pytest.approx(p)
    assert m["length/std"] == pytest.approx(lengths.std())
    assert m["length/clip_ratio"] == pytest.approx(truncated.mean())
    assert m["reward/std"] == pytest.approx(rewards.std())
    assert m["reward/truncated_mean"] == pytest.approx(rewards[truncated].mean())
    assert m["corr/reward_length_pearson"] == pytest.approx(
        stats.pearsonr(rewards, lengths).statistic, abs=1e-12)
    assert m["corr/reward_length_spearman"] == pytest.approx(
        stats.spearmanr(rewards, lengths).statistic, abs=1e-12)

    per_group = []
    for gid in np.unique(groups):
        r, ln = rewards[groups == gid], lengths[groups == gid]
        if np.ptp(r) > 0 and np.ptp(ln) > 0:
            per_group.append(stats.spearmanr(r, ln).statistic)
    assert m["corr/within_group_count"] == len(per_group)
    assert m["corr/within_group_spearman"] == pytest.approx(np.mean(per_group), abs=1e-12)


def test_spearman_with_ties_inside_groups_matches_scipy() -> None:
    rng = np.random.default_rng(2)
    for _ in range(50):
        size = int(rng.integers(2, 9))
        groups = np.repeat(np.arange(6), size)
        lengths = rng.integers(1, 5, groups.size)  # heavy ties in length too
        rewards = rng.integers(0, 3, groups.size).astype(float)
        m = metrics(lengths, np.zeros(groups.size), rewards, groups, max_len=8)
        expected = [stats.spearmanr(rewards[groups == k], lengths[groups == k]).statistic
                    for k in range(6)
                    if np.ptp(rewards[groups == k]) and np.ptp(lengths[groups == k])]
        if expected:
            assert m["corr/within_group_spearman"] == pytest.approx(np.mean(expected))
            assert m["corr/within_group_count"] == len(expected)
        else:
            assert "corr/within_group_spearman" not in m


def test_clip_ratio_uses_the_finish_reason_not_length_equal_to_cap() -> None:
    # The first completion ended with EOS exactly at the cap; the last was cut by the cap.
    # veRL counts "length == padded width" and would report 2/4 (or 0/4 when over-padded).
    m = metrics(lengths=[8, 3, 5, 8], truncated=[False, False, False, True],
                rewards=[1, 0, 1, 0], groups=[0, 0, 1, 1], max_len=8)
    assert m["length/clip_ratio"] == 0.25
    assert m["length/terminated_mean"] == pytest.approx((8 + 3 + 5) / 3)
    assert m["reward/truncated_mean"] == 0.0


def test_degenerate_batches_omit_undefined_metrics() -> None:
    # Constant reward, nothing truncated, no correctness info.
    m = metrics(lengths=[3, 5, 7, 9], truncated=[0, 0, 0, 0], rewards=[1, 1, 1, 1],
                groups=[0, 0, 1, 1])
    assert ALWAYS | {"length/terminated_mean", "length/between_prompt_frac"} == set(m)
    for key in ("reward/truncated_mean", "corr/reward_length_pearson",
                "corr/reward_length_spearman", "corr/within_group_spearman",
                "corr/within_group_count", "length/correct_mean", "length/incorrect_mean"):
        assert key not in m
    assert m["reward/std"] == 0.0

    # Everything truncated at the same length: no terminated mean, constant length.
    m = metrics(lengths=[10] * 4, truncated=[1] * 4, rewards=[0, 1, 0, 1], groups=[0, 0, 1, 1],
                correct=[np.nan] * 4)
    assert "length/terminated_mean" not in m and "corr/reward_length_pearson" not in m
    assert "length/correct_mean" not in m and "length/incorrect_mean" not in m
    assert m["length/clip_ratio"] == 1.0
    assert "length/between_prompt_frac" not in m and m["length/within_group_std"] == 0.0

    # Only wrong answers known: incorrect mean only.
    m = metrics(lengths=[2, 4], truncated=[0, 0], rewards=[0, 0], groups=[0, 0],
                correct=[0.0, np.nan])
    assert m["length/incorrect_mean"] == 2.0 and "length/correct_mean" not in m

    # Empty batch: only the cap.
    assert metrics([], [], [], []) == {"max_len": 10}

    # A NaN reward: reward statistics and correlations are undefined, never NaN.
    m = metrics(lengths=[1, 2, 3], truncated=[0, 0, 0], rewards=[0, np.nan, 1], groups=[0, 0, 0])
    assert all(np.isfinite(v) for v in m.values())
    assert "reward/mean" not in m and "corr/reward_length_spearman" not in m


def test_within_group_spearman_skips_constant_groups_and_counts_used_ones() -> None:
    m = metrics(
        lengths=[1, 2, 3, 4, 4, 4, 1, 2, 3, 7],
        rewards=[0, 1, 2, 1, 0, 1, 5, 5, 5, 9],
        groups=[0, 0, 0, 1, 1, 1, 2, 2, 2, 3],  # 1: constant length, 2: constant reward,
        truncated=[0] * 10,                      # 3: a single completion
    )
    assert m["corr/within_group_count"] == 1
    assert m["corr/within_group_spearman"] == pytest.approx(1.0)


def test_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="rewards"):
        metrics(lengths=[1, 2], truncated=[0, 0], rewards=[1.0], groups=[0, 0])


def test_histogram_has_fixed_edges_and_keeps_overflow() -> None:
    counts, edges = length_histogram(np.array([0, 1, 4, 7, 8, 8, 12]), max_len=8, num_bins=4)
    assert edges.tolist() == [0, 2, 4, 6, 8]
    # [0,2) [2,4) [4,6) [6,8]; 12 is above the cap and is counted in the last bin.
    assert counts.tolist() == [2, 0, 1, 4]
    assert counts.sum() == 7
    same_edges = length_histogram(np.array([3]), max_len=8, num_bins=4)[1]
    assert np.array_equal(edges, same_edges)  # independent of the data
    with pytest.raises(ValueError):
        length_histogram(np.array([1]), max_len=0)


def test_budget_adherence_metrics() -> None:
    m = budget_metrics(np.array([10, 20, 30, 5]), np.array([8, 16, 24, 32]))
    # mean N 20; |len - N| = 2, 4, 6, 27 -> 9.75; over budget: 3 of 4
    assert m["budget/requested_mean"] == 20.0
    assert m["budget/abs_error_mean"] == pytest.approx(9.75)
    assert m["budget/over_frac"] == 0.75
    # ranks N 1 2 3 4, len 2 3 4 1: Pearson of ranks = -1 / 5
    assert m["budget/length_spearman"] == pytest.approx(-0.2)
    assert m["budget/length_spearman"] == pytest.approx(
        stats.spearmanr([8, 16, 24, 32], [10, 20, 30, 5]).statistic)
    same = budget_metrics(np.array([3, 4]), np.array([8, 8]))
    assert "budget/length_spearman" not in same and same["budget/over_frac"] == 0.0
    assert budget_metrics(np.zeros(0), np.zeros(0)) == {}


def test_length_control_metrics_only_for_present_columns() -> None:
    cols = {"response_length": np.array([4, 8, 12, 16]),
            "gfpo_kept": np.array([True, False, True, False])}
    assert length_control_metrics(cols, 1, 1) == {"gfpo/kept_length_mean": 8.0}
    assert length_control_metrics({"response_length": np.array([1])}, 1, 1) == {}


def test_variance_split_of_many_steps_matches_pandas() -> None:
    """Per step: between-prompt share and within-group spread, against a groupby written
    from the definitions; the split is exact (between + within = the step's variance)."""
    import pandas as pd

    rng = np.random.default_rng(0)
    rows = pd.DataFrame({"step": rng.integers(0, 5, 400), "prompt": rng.integers(0, 7, 400)})
    rows["length"] = rng.integers(1, 60, 400) + 10 * rows["prompt"]  # prompts differ in length
    rows.loc[rows["step"] == 4, "length"] = 17.0  # one step where every length is equal
    steps = np.sort(rows["step"].unique())
    inv = np.searchsorted(steps, rows["step"].to_numpy())
    got = grouped_variance_split(inv, len(steps), rows["prompt"].to_numpy(),
                                 rows["length"].to_numpy(float))
    for i, step in enumerate(steps):
        one = rows[rows["step"] == step]
        group_mean = one.groupby("prompt")["length"].transform("mean")
        within = ((one["length"] - group_mean) ** 2).mean()
        between = ((group_mean - one["length"].mean()) ** 2).mean()
        assert between + within == pytest.approx(one["length"].var(ddof=0))
        assert got["length/within_group_std"][i] == pytest.approx(np.sqrt(within))
        if step == 4:
            assert np.isnan(got["length/between_prompt_frac"][i])
        else:
            assert got["length/between_prompt_frac"][i] == pytest.approx(
                between / one["length"].var(ddof=0))
            assert 0.2 < got["length/between_prompt_frac"][i] < 1
    # a prompt id shared by two steps is two groups, one per step
    same = grouped_variance_split(np.array([0, 0, 1, 1]), 2, np.array([3, 3, 3, 3]),
                                  np.array([1.0, 3.0, 5.0, 9.0]))
    assert same["length/within_group_std"].tolist() == [1.0, 2.0]
    assert same["length/between_prompt_frac"].tolist() == [0.0, 0.0]


def test_entropy_by_outcome_and_position_over_the_update_rows() -> None:
    """Rows outside the update (NaN entropy) are left out; each completion counts once."""
    nan = np.nan
    cols = {"entropy": np.array([0.1, 0.3, 0.5, nan]),
            "entropy_first_quarter": np.array([0.2, 0.4, 0.6, nan]),
            "entropy_last_quarter": np.array([0.0, 0.1, 0.2, nan]),
            "truncated": np.array([True, False, False, True]),
            "correct": np.array([0.0, 1.0, nan, 1.0])}
    m = entropy_metrics(cols)
    assert m == pytest.approx({"entropy/truncated_mean": 0.1, "entropy/finished_mean": 0.4,
                               "entropy/correct_mean": 0.3, "entropy/incorrect_mean": 0.1,
                               "entropy/first_quarter_mean": 0.4,
                               "entropy/last_quarter_mean": 0.1})
    none_truncated = {**cols, "truncated": np.zeros(4, bool)}
    assert "entropy/truncated_mean" not in entropy_metrics(none_truncated)
    assert entropy_metrics({**cols, "entropy": np.full(4, nan)}) == {}
