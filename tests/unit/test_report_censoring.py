"""Kaplan-Meier length estimate against hand-computed survival curves."""

from __future__ import annotations

import math

import numpy as np
import pytest

from grpo_cli.report.censoring import TARGET_TRUNCATION, cap_advice, kaplan_meier


def test_without_censoring_it_is_the_empirical_distribution() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 200, size=1000)
    km = kaplan_meier(lengths, np.zeros(1000, dtype=bool))
    assert km.km_mean == pytest.approx(lengths.mean())
    assert km.naive_mean == pytest.approx(lengths.mean())
    # p95: the smallest length with at most 5% of completions longer.
    assert km.p95 == np.quantile(lengths, 1 - TARGET_TRUNCATION, method="inverted_cdf")
    for cap in (1, 50, 100.5, 199, 250):
        assert km.share_longer(cap) == pytest.approx(np.mean(lengths > cap))
    assert not km.censored_at_max


def test_censoring_in_the_middle_matches_the_hand_computation() -> None:
    # exact 2, 4, 6; censored at 3. S: 1 -> 3/4 at 2; 3 is censored (2 left at risk);
    # 3/4 * 1/2 = 3/8 at 4; 0 at 6.
    km = kaplan_meier(np.array([2, 3, 4, 6]), np.array([False, True, False, False]))
    assert [km.share_longer(x) for x in (1, 2, 3, 4, 5, 6, 7)] == pytest.approx(
        [1, 0.75, 0.75, 0.375, 0.375, 0, 0])
    assert km.km_mean == pytest.approx(2 * 1 + 2 * 0.75 + 2 * 0.375)  # area under S: 4.25
    assert km.naive_mean == pytest.approx(3.75)
    assert km.km_mean > km.naive_mean
    assert km.p95 == 6
    advice = cap_advice(km, current_cap=4)
    assert advice.recommended_cap == math.ceil(6 * 1.1)
    assert "recommended cap: 7 tokens" in advice.message


def test_a_fixed_cap_leaves_the_tail_unknown() -> None:
    # 1..5 with the two completions at the cap 5 truncated: P(L > 5) = 2/7, beyond unknown.
    lengths = np.array([1, 2, 3, 4, 5, 5, 5])
    truncated = np.array([0, 0, 0, 0, 1, 1, 0], dtype=bool)
    km = kaplan_meier(lengths, truncated, steps=(8, 9))
    assert [km.share_longer(x) for x in (1, 2, 3, 4, 5)] == pytest.approx(
        [6 / 7, 5 / 7, 4 / 7, 3 / 7, 2 / 7])
    assert math.isnan(km.share_longer(6))
    assert km.censored_at_max and km.p95 is None
    advice = cap_advice(km, current_cap=5)
    assert advice.recommended_cap is None and advice.censored_beyond == 5
    assert "more than 5 tokens" in advice.message and "censored" in advice.message
    shares = {m: share for m, _, share in advice.shares}
    assert shares[1.0] == pytest.approx(2 / 7)
    assert math.isnan(shares[1.5]) and math.isnan(shares[2.0])


def test_censoring_raises_the_estimate_above_the_naive_mean() -> None:
    # Natural lengths ~ exponential(mean 40); each batch had a different cap (a schedule).
    rng = np.random.default_rng(1)
    natural = rng.exponential(40, size=20000) + 1
    caps = rng.choice([30, 60, 400], size=natural.size)
    observed = np.minimum(natural, caps)
    km = kaplan_meier(observed, natural > caps)
    assert km.naive_mean < 0.9 * natural.mean()
    assert km.km_mean == pytest.approx(natural.mean(), rel=0.05)
    assert km.share_longer(100) == pytest.approx(np.mean(natural > 100), abs=0.01)


def test_all_truncated_is_refused() -> None:
    with pytest.raises(ValueError, match="every completion"):
        kaplan_meier(np.array([8, 8]), np.array([True, True]))
