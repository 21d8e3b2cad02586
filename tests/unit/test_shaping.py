"""Length shaping terms and cap schedules at their boundaries."""

from __future__ import annotations

import math

import pytest
import torch

from grpo_cli.rewards.shaping import (
    cap_at_step,
    cosine_length_reward,
    kimi_length_reward,
    linear_length_penalty,
    linear_ramp_cap,
    overlong_penalty,
)


def test_overlong_penalty_boundaries() -> None:
    # L = 20, B = 4: zero up to 16, linear to -1 at 20, -1 beyond.
    lengths = torch.tensor([0, 16, 17, 18, 20, 21])
    out = overlong_penalty(lengths, max_len=20, buffer=4, factor=1.0)
    torch.testing.assert_close(out, torch.tensor([0.0, 0.0, -0.25, -0.5, -1.0, -1.0]))
    scaled = overlong_penalty(torch.tensor([18, 25]), 20, 4, factor=0.5)
    torch.testing.assert_close(scaled, torch.tensor([-0.25, -0.5]))
    with pytest.raises(ValueError, match="overlong_buffer"):
        overlong_penalty(lengths, 20, 0)


def test_cosine_reward_end_points() -> None:
    lengths = torch.tensor([0, 100, 0, 100, 50])
    correct = torch.tensor([True, True, False, False, True])
    truncated = torch.tensor([False, False, False, False, True])
    out = cosine_length_reward(lengths, correct, truncated, max_len=100)
    torch.testing.assert_close(out, torch.tensor([2.0, 1.0, -10.0, 0.0, -10.0]))
    mid = cosine_length_reward(torch.tensor([50]), torch.tensor([True]), torch.tensor([False]), 100)
    assert mid.item() == pytest.approx(1.5)


def test_kimi_group_reward() -> None:
    lengths = torch.tensor([10, 20, 30, 5, 5, 5])
    correct = torch.tensor([True, False, True, True, False, True])
    out = kimi_length_reward(lengths, correct, group_size=3)
    # group 0: lambda = 0.5, 0.0, -0.5; wrong row keeps min(0, 0) = 0; group 1 all equal: 0.
    torch.testing.assert_close(out, torch.tensor([0.5, 0.0, -0.5, 0.0, 0.0, 0.0]))
    wrong_short = kimi_length_reward(torch.tensor([10, 30]), torch.tensor([False, True]), 2)
    torch.testing.assert_close(wrong_short, torch.tensor([0.0, -0.5]))


def test_linear_penalty() -> None:
    torch.testing.assert_close(linear_length_penalty(torch.tensor([0, 50, 100]), 100),
                               torch.tensor([0.0, -0.5, -1.0]))


def test_cap_schedule_stages() -> None:
    sched = [(0, 8), (10, 16), (20, 24)]
    assert [cap_at_step(sched, s, 4) for s in (0, 9, 10, 19, 20, 100)] == [8, 8, 16, 16, 24, 24]
    assert cap_at_step([(5, 64)], 2, 32) == 32  # before the first stage: the default
    assert cap_at_step(None, 3, 32) == 32
    with pytest.raises(ValueError, match="non-decreasing"):
        cap_at_step([(10, 8), (5, 16)], 0, 4)
    with pytest.raises(ValueError, match="positive"):
        cap_at_step([(0, 0)], 0, 4)


def test_linear_schedule_mode_interpolates_between_stages() -> None:
    sched = [(0, 100), (10, 200), (20, 200)]
    caps = [cap_at_step(sched, s, 50, mode="linear") for s in (0, 5, 10, 15, 30)]
    assert caps == [100, 150, 200, 200, 200]
    assert cap_at_step([(4, 10), (8, 20)], 2, 7, mode="linear") == 7
    with pytest.raises(ValueError, match="schedule_mode"):
        cap_at_step(sched, 0, 1, mode="cubic")


def test_linear_ramp() -> None:
    caps = [linear_ramp_cap(s, 10, 20, 100, 200) for s in (0, 10, 15, 20, 30)]
    assert caps == [100, 100, 150, 200, 200]
    assert math.isclose(linear_ramp_cap(5, 5, 5, 1, 2), 2)
