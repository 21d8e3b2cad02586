"""Length shaping terms and cap schedules at their boundaries (hand-computed values)."""

from __future__ import annotations

import math

import pytest
import torch

from grpo_cli.rewards.shaping import (
    adaptive_cap,
    arora_zanette_reward,
    cap_at_step,
    cosine_length_reward,
    kimi_length_reward,
    l1_exact_reward,
    l1_max_reward,
    linear_length_penalty,
    linear_ramp_cap,
    overlong_penalty,
    shorter_better_reward,
    stop_properly_penalty,
)

# --- DAPO soft overlong punishment ----------------------------------------------------------


def test_overlong_penalty_boundaries() -> None:
    # L = 20, B = 4: zero up to 16 (= L - B, inclusive), linear to -1 at 20 (= L), -1 beyond.
    lengths = torch.tensor([0, 15, 16, 17, 18, 19, 20, 21, 1000])
    out = overlong_penalty(lengths, max_len=20, buffer=4, factor=1.0)
    expected = torch.tensor([0.0, 0.0, 0.0, -0.25, -0.5, -0.75, -1.0, -1.0, -1.0])
    torch.testing.assert_close(out, expected)


def test_overlong_penalty_factor_and_float_lengths() -> None:
    scaled = overlong_penalty(torch.tensor([16, 18, 20, 25]), 20, 4, factor=0.5)
    torch.testing.assert_close(scaled, torch.tensor([0.0, -0.25, -0.5, -0.5]))
    # just inside the ramp, and just past the cap (flat -1, not the ramp's -1.125)
    frac = overlong_penalty(torch.tensor([16.5, 20.5]), 20, 4)
    torch.testing.assert_close(frac, torch.tensor([-0.125, -1.0]))


def test_overlong_penalty_buffer_equal_to_cap() -> None:
    # B = L = 10: the ramp starts at 0 tokens.
    out = overlong_penalty(torch.tensor([0, 5, 10, 11]), 10, 10)
    torch.testing.assert_close(out, torch.tensor([0.0, -0.5, -1.0, -1.0]))


@pytest.mark.parametrize("buffer", [0, -1, 21])
def test_overlong_penalty_rejects_bad_buffers(buffer: int) -> None:
    with pytest.raises(ValueError, match="overlong_buffer"):
        overlong_penalty(torch.tensor([1]), 20, buffer)


def test_overlong_penalty_empty_batch() -> None:
    assert overlong_penalty(torch.zeros(0), 20, 4).shape == (0,)


# --- cosine length scaling (Yeo et al.) -----------------------------------------------------


def test_cosine_reward_end_points() -> None:
    lengths = torch.tensor([0, 100, 0, 100, 50])
    correct = torch.tensor([True, True, False, False, True])
    truncated = torch.tensor([False, False, False, False, True])
    out = cosine_length_reward(lengths, correct, truncated, max_len=100)
    torch.testing.assert_close(out, torch.tensor([2.0, 1.0, -10.0, 0.0, -10.0]))


def test_cosine_reward_interior_points() -> None:
    # t = L/2: cos(pi/2) = 0 -> the midpoint of a and b
    half = cosine_length_reward(torch.tensor([50, 50]), torch.tensor([True, False]),
                                torch.zeros(2, dtype=torch.bool), max_len=100)
    torch.testing.assert_close(half, torch.tensor([1.5, -5.0]))
    # t = L/3 (40 of 120): cos(pi/3) = 1/2 -> b + 3/4 (a - b): 1 + 0.75, 0 - 7.5
    third = cosine_length_reward(torch.tensor([40, 40]), torch.tensor([True, False]),
                                 torch.zeros(2, dtype=torch.bool), max_len=120)
    torch.testing.assert_close(third, torch.tensor([1.75, -7.5]))


def test_cosine_reward_truncation_and_past_the_cap() -> None:
    # truncated wins over correctness; a non-truncated length past L reads as L
    out = cosine_length_reward(torch.tensor([10, 130]), torch.tensor([True, True]),
                               torch.tensor([True, False]), max_len=100, r_exceed=-3.0)
    torch.testing.assert_close(out, torch.tensor([-3.0, 1.0]))
    custom = cosine_length_reward(torch.tensor([0]), torch.tensor([True]),
                                  torch.tensor([False]), 100, r0_correct=5.0, rL_correct=4.0)
    assert custom.item() == pytest.approx(5.0)


def test_cosine_reward_correct_short_beats_long_and_wrong_long_beats_short() -> None:
    lengths = torch.arange(0, 101, 10)
    n = len(lengths)
    right = cosine_length_reward(lengths, torch.ones(n, dtype=torch.bool),
                                 torch.zeros(n, dtype=torch.bool), 100)
    wrong = cosine_length_reward(lengths, torch.zeros(n, dtype=torch.bool),
                                 torch.zeros(n, dtype=torch.bool), 100)
    assert bool((right[1:] < right[:-1]).all()) and bool((wrong[1:] > wrong[:-1]).all())


# --- Kimi k1.5 group length reward --------------------------------------------------------


def test_kimi_group_reward() -> None:
    lengths = torch.tensor([10, 20, 30, 5, 5, 5])
    correct = torch.tensor([True, False, True, True, False, True])
    out = kimi_length_reward(lengths, correct, group_size=3)
    # group 0: lambda = 0.5, 0.0, -0.5; wrong row keeps min(0, 0) = 0; group 1 all equal: 0.
    torch.testing.assert_close(out, torch.tensor([0.5, 0.0, -0.5, 0.0, 0.0, 0.0]))


def test_kimi_wrong_answers_are_never_rewarded_for_being_short() -> None:
    out = kimi_length_reward(torch.tensor([10, 30, 10, 30]),
                             torch.tensor([False, True, True, False]), 2)
    # group 0: wrong short min(0, 0.5) = 0, correct long -0.5; group 1: 0.5, wrong long -0.5
    torch.testing.assert_close(out, torch.tensor([0.0, -0.5, 0.5, -0.5]))


def test_kimi_quarter_points_and_groups_are_independent() -> None:
    lengths = torch.tensor([0, 25, 75, 100, 7, 9])
    out = kimi_length_reward(lengths, torch.ones(6, dtype=torch.bool), 2)
    # pairs: (0, 25) -> 0.5, -0.5; (75, 100) -> 0.5, -0.5; (7, 9) -> 0.5, -0.5
    torch.testing.assert_close(out, torch.tensor([0.5, -0.5, 0.5, -0.5, 0.5, -0.5]))
    out4 = kimi_length_reward(lengths[:4], torch.ones(4, dtype=torch.bool), 4)
    torch.testing.assert_close(out4, torch.tensor([0.5, 0.25, -0.25, -0.5]))


def test_kimi_all_equal_empty_and_bad_groups() -> None:
    same = kimi_length_reward(torch.tensor([7, 7, 7]), torch.tensor([True, False, True]), 3)
    assert torch.equal(same, torch.zeros(3))
    assert kimi_length_reward(torch.zeros(0), torch.zeros(0, dtype=torch.bool), 4).shape == (0,)
    with pytest.raises(ValueError, match="groups of 4"):
        kimi_length_reward(torch.zeros(6), torch.zeros(6, dtype=torch.bool), 4)
    with pytest.raises(ValueError, match="groups of 0"):
        kimi_length_reward(torch.zeros(6), torch.zeros(6, dtype=torch.bool), 0)


# --- linear penalty -----------------------------------------------------------------------


def test_linear_penalty() -> None:
    torch.testing.assert_close(linear_length_penalty(torch.tensor([0, 50, 100, 150]), 100),
                               torch.tensor([0.0, -0.5, -1.0, -1.5]))
    with pytest.raises(ValueError, match="max_len"):
        linear_length_penalty(torch.tensor([1]), 0)


# --- cap schedules ------------------------------------------------------------------------


def test_cap_schedule_stages() -> None:
    sched = [(0, 8), (10, 16), (20, 24)]
    assert [cap_at_step(sched, s, 4) for s in (0, 9, 10, 19, 20, 100)] == [8, 8, 16, 16, 24, 24]
    assert cap_at_step([(5, 64)], 2, 32) == 32  # before the first stage: the default
    assert cap_at_step([(5, 64)], 5, 32) == 64  # at the first stage's start: the stage
    assert cap_at_step(None, 3, 32) == 32
    assert cap_at_step([], 3, 32) == 32


def test_deepscaler_schedule_and_equal_starts() -> None:
    ds = [[0, 8192], [1040, 16384], [1520, 24576]]
    assert [cap_at_step(ds, s, 1) for s in (1039, 1040, 1519, 1520)] == [8192, 16384, 16384,
                                                                          24576]
    assert cap_at_step([(3, 10), (3, 20)], 3, 5) == 20  # the later stage with the same start


def test_cap_schedule_validation_names_the_key() -> None:
    with pytest.raises(ValueError, match=r"length\.schedule.*non-decreasing"):
        cap_at_step([(10, 8), (5, 16)], 0, 4)
    with pytest.raises(ValueError, match=r"length\.schedule.*positive"):
        cap_at_step([(0, 0)], 0, 4)
    with pytest.raises(ValueError, match=r"length\.schedule\[1\].*expected \[step, max_len\]"):
        cap_at_step([(0, 8), (1, 2, 3)], 0, 4)
    with pytest.raises(ValueError, match="schedule_mode"):
        cap_at_step([(0, 8)], 0, 1, mode="cubic")


def test_linear_schedule_mode_interpolates_between_stages() -> None:
    sched = [(0, 100), (10, 200), (20, 200)]
    caps = [cap_at_step(sched, s, 50, mode="linear") for s in (0, 5, 10, 15, 30)]
    assert caps == [100, 150, 200, 200, 200]
    assert cap_at_step([(4, 10), (8, 20)], 2, 7, mode="linear") == 7  # before: the default
    # tightening (ThinkPrune direction)
    assert cap_at_step([(0, 400), (4, 100)], 1, 1, mode="linear") == 325


def test_linear_ramp() -> None:
    caps = [linear_ramp_cap(s, 10, 20, 100, 200) for s in (0, 10, 15, 20, 30)]
    assert caps == [100, 100, 150, 200, 200]
    assert linear_ramp_cap(13, 10, 20, 100, 200) == 130
    assert linear_ramp_cap(5, 5, 5, 1, 2) == 2 and linear_ramp_cap(4, 5, 5, 1, 2) == 1
    assert isinstance(linear_ramp_cap(11, 10, 13, 100, 200), int)
    assert math.isclose(linear_ramp_cap(11, 10, 13, 100, 200), 133)  # 133.33 rounded


def test_linear_ramp_validation() -> None:
    with pytest.raises(ValueError, match=r"length\.schedule.*non-decreasing"):
        linear_ramp_cap(0, 10, 5, 100, 200)
    with pytest.raises(ValueError, match=r"length\.schedule.*positive"):
        linear_ramp_cap(0, 0, 5, 0, 200)


# --- boundaries the formulas allow (each a mutation that once survived) ---------------------

def test_smallest_valid_caps_buffers_and_groups_are_accepted() -> None:
    from grpo_cli.rewards.shaping import linear_length_penalty, linear_ramp_cap

    assert linear_length_penalty(torch.tensor([0, 1]), 1).tolist() == [0.0, -1.0]  # cap 1
    # buffer 1: only the cap's own token is in the buffer, at -factor
    assert overlong_penalty(torch.tensor([3, 4, 5]), 4, 1).tolist() == [0.0, -1.0, -1.0]
    # groups of one completion: no spread, so no length reward
    assert kimi_length_reward(torch.tensor([3, 9]), torch.tensor([1, 0]), 1).tolist() == [0, 0]
    assert linear_ramp_cap(5, 0, 10, 4, 1) == 2  # a ramp down to a cap of 1 token
    with pytest.raises(ValueError, match="caps must be positive, got 4 -> 0"):
        linear_ramp_cap(5, 0, 10, 4, 0)
    with pytest.raises(ValueError, match="lengths must be 1-D"):
        linear_length_penalty(torch.zeros(2, 2), 4)


def test_kimi_reward_for_lengths_one_token_apart() -> None:
    """A span of exactly one token is a spread like any other: +0.5 for the shorter."""
    got = kimi_length_reward(torch.tensor([4, 5]), torch.tensor([1, 1]), 2)
    assert got.tolist() == [0.5, -0.5]


# --- ShorterBetter (Yi et al. 2025) -----------------------------------------------------------

T, F = True, False


def test_shorter_better_sol_is_the_shortest_correct_length() -> None:
    lengths = torch.tensor([10, 20, 6, 30, 8, 12, 16, 4])
    correct = torch.tensor([F, T, F, T, F, F, F, F])
    out = shorter_better_reward(lengths, correct, group_size=4, alpha=1.0, beta=0.1)
    # group 0: SOL = 20 (the only shorter length, 6, is wrong):
    #   10 wrong: 0 - 0.1*10 = -1.0; 20 right: 1 - 0 = 1.0; 6 wrong: -0.1*14 = -1.4;
    #   30 right: 1 - 0.1*10 = 0.0
    # group 1: nobody right -> SOL = mean(8, 12, 16, 4) = 10: -0.1 * |8-10|, |12-10|, ...
    #   = -0.2, -0.2, -0.6, -0.6
    torch.testing.assert_close(out, torch.tensor([-1.0, 1.0, -1.4, 0.0,
                                                  -0.2, -0.2, -0.6, -0.6]))


def test_shorter_better_alpha_scales_correctness_only() -> None:
    out = shorter_better_reward(torch.tensor([5, 9]), torch.tensor([T, T]), 2, alpha=2.0,
                                beta=0.25)
    # SOL = 5: 2*1 - 0 = 2.0; 2*1 - 0.25*4 = 1.0
    torch.testing.assert_close(out, torch.tensor([2.0, 1.0]))
    with pytest.raises(ValueError, match="groups of 3"):
        shorter_better_reward(torch.zeros(4), torch.zeros(4, dtype=torch.bool), 3)
    assert shorter_better_reward(torch.zeros(0), torch.zeros(0, dtype=torch.bool), 4).shape \
        == (0,)


# --- Arora & Zanette 2025 ---------------------------------------------------------------------


def test_arora_zanette_normalises_by_the_correct_samples() -> None:
    lengths = torch.tensor([10, 30, 99, 7, 9, 5, 6, 8, 8])
    correct = torch.tensor([T, T, F, T, F, F, F, T, T])
    # rows 0-2: one group of 3; rows 3-8: three groups of 2
    out = arora_zanette_reward(lengths[:3], correct[:3], 3, alpha=0.5)
    # correct lengths 10, 30: mean 20, population std 10 -> z = -1, +1;
    # sigmoid(-1) = 0.2689414, sigmoid(1) = 0.7310586; r = 1 - 0.5 * sigmoid(z); wrong: 0
    torch.testing.assert_close(out, torch.tensor([1 - 0.5 * 0.2689414, 1 - 0.5 * 0.7310586,
                                                  0.0]))
    pairs = arora_zanette_reward(lengths[3:], correct[3:], 2, alpha=0.5)
    # (7 right, 9 wrong): one correct -> std 0 -> z = 0 -> 1 - 0.5 * 0.5 = 0.75, wrong 0;
    # (5, 6) both wrong -> 0, 0; (8, 8) both right, equal -> z = 0 -> 0.75, 0.75
    torch.testing.assert_close(pairs, torch.tensor([0.75, 0.0, 0.0, 0.0, 0.75, 0.75]))


def test_arora_zanette_three_correct_and_alpha_zero() -> None:
    lengths = torch.tensor([10, 20, 30, 40])
    correct = torch.tensor([T, T, T, F])
    out = arora_zanette_reward(lengths, correct, 4, alpha=0.2)
    # mean_c 20, population std sqrt((100 + 0 + 100) / 3) = 8.164966 -> z = -1.224745, 0,
    # +1.224745; sigmoid: 0.2271, 0.5, 0.7729 -> 1 - 0.2 * that = 0.95458, 0.9, 0.84542
    torch.testing.assert_close(out, torch.tensor([0.954580, 0.9, 0.845420, 0.0]), atol=1e-5,
                               rtol=0)
    plain = arora_zanette_reward(lengths, correct, 4, alpha=0.0)
    torch.testing.assert_close(plain, torch.tensor([1.0, 1.0, 1.0, 0.0]))


# --- L1 / LCPO (Aggarwal & Welleck 2025) ------------------------------------------------------


def test_l1_exact_pulls_both_ways_towards_the_budget() -> None:
    out = l1_exact_reward(torch.tensor([10, 20, 30, 5]), torch.tensor([T, T, F, T]),
                          torch.tensor([20, 20, 20, 40]), alpha=0.01)
    # 1 - 0.01*10 = 0.9; 1 - 0 = 1.0; 0 - 0.01*10 = -0.1; 1 - 0.01*35 = 0.65
    torch.testing.assert_close(out, torch.tensor([0.9, 1.0, -0.1, 0.65]))


def test_l1_max_is_clipped_and_only_for_correct_answers() -> None:
    lengths = torch.tensor([0, 10, 20, 25, 30, 40, 5])
    correct = torch.tensor([T, T, T, T, T, T, F])
    out = l1_max_reward(lengths, correct, torch.full((7,), 20), alpha=0.05, delta=0.5)
    # 0.05 * (20 - len) + 0.5 = 1.5, 1.0, 0.5, 0.25, 0.0, -0.5 -> clip [0, 1]; wrong -> 0
    torch.testing.assert_close(out, torch.tensor([1.0, 1.0, 0.5, 0.25, 0.0, 0.0, 0.0]))


# --- ProRL stop-properly penalty --------------------------------------------------------------


def test_stop_properly_penalty_coef_and_value() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.5, 1.0])
    cut = torch.tensor([F, T, T, F])
    torch.testing.assert_close(stop_properly_penalty(rewards, cut, coef=0.5),
                               torch.tensor([1.0, 0.0, 0.25, 1.0]))
    torch.testing.assert_close(stop_properly_penalty(rewards, cut, value=-0.5),
                               torch.tensor([1.0, -0.5, -0.5, 1.0]))
    r64 = stop_properly_penalty(rewards.double(), cut, coef=0.0)
    assert r64.dtype == torch.float64 and r64.tolist() == [1.0, 0.0, 0.0, 1.0]
    for kwargs in ({}, {"coef": 0.5, "value": 0.0}):
        with pytest.raises(ValueError, match="set exactly one"):
            stop_properly_penalty(rewards, cut, **kwargs)


# --- ThinkPrune adaptive rounds -------------------------------------------------------------


def test_adaptive_cap_advances_a_round_after_a_low_clip_ratio() -> None:
    def cap(history: list[float]) -> int:
        return adaptive_cap(history, 32, [24, 16], threshold=0.2, min_steps=2)

    assert cap([]) == 32  # step 0: the starting cap
    assert cap([0.1]) == 32  # low, but the round has run only 1 of its 2 steps
    assert cap([0.1, 0.1]) == 24  # 2 steps, the last below 0.2 -> round 1 from step 2
    assert cap([0.5, 0.3, 0.1]) == 24  # 0.3 is not low; the third step is
    assert cap([0.5, 0.2]) == 32  # equal to the threshold is not below it
    # round 1 starts after step 1; its first step (2) cannot end it; step 3 does -> 16
    assert cap([0.5, 0.1, 0.1]) == 24
    assert cap([0.5, 0.1, 0.1, 0.1]) == 16
    assert cap([0.5, 0.1, 0.1, 0.1, 0.0, 0.0]) == 16  # after the last round the cap stays
    assert adaptive_cap([0.0] * 5, 32, [], 0.2) == 32  # no rounds: the fixed cap
    assert adaptive_cap([0.0], 32, [24, 16], 0.2, min_steps=1) == 24
    with pytest.raises(ValueError, match="round_min_steps=0"):
        adaptive_cap([], 32, [24], 0.2, min_steps=0)
