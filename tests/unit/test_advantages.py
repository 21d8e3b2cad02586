"""Group advantages against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from grpo_cli.algo.advantages import group_advantages, zero_std_group_fraction


def test_grpo_normalises_by_unbiased_std_per_group() -> None:
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    adv = group_advantages(r, group_size=4, eps=0.0)
    # group 0: mean 0.5, unbiased std sqrt(1/3)
    s = (1 / 3) ** 0.5
    torch.testing.assert_close(adv[:4], torch.tensor([0.5, -0.5, -0.5, 0.5]) / s)
    torch.testing.assert_close(adv[4:], torch.zeros(4))  # constant group: no gradient


def test_dr_grpo_only_centres() -> None:
    r = torch.tensor([3.0, 1.0, 0.0, 0.0])
    adv = group_advantages(r, group_size=2, norm_by_std=False)
    torch.testing.assert_close(adv, torch.tensor([1.0, -1.0, 0.0, 0.0]))


def test_invalid_rows_leave_group_statistics() -> None:
    r = torch.tensor([1.0, 0.0, 100.0, 0.0])
    valid = torch.tensor([True, True, False, True])
    adv = group_advantages(r, group_size=4, norm_by_std=False, valid=valid)
    torch.testing.assert_close(adv, torch.tensor([2 / 3, -1 / 3, 0.0, -1 / 3]))
    lone = group_advantages(torch.tensor([1.0, 5.0]), 2, valid=torch.tensor([True, False]))
    torch.testing.assert_close(lone, torch.zeros(2))


def test_bad_group_size_and_zero_std_fraction() -> None:
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(torch.zeros(4), group_size=3)
    r = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    assert zero_std_group_fraction(r, 2) == pytest.approx(2 / 3)
