"""Group advantages against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from grpo_cli.algo.advantages import group_advantages, zero_std_group_fraction


def test_grpo_normalises_by_unbiased_std_per_group() -> None:
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    adv = group_advantages(r, group_size=4, eps=0.0)
    # group 0: mean 0.5, unbiased std sqrt((4 * 0.25) / 3) = sqrt(1/3) (biased would be 0.5)
    s = (1 / 3) ** 0.5
    torch.testing.assert_close(adv[:4], torch.tensor([0.5, -0.5, -0.5, 0.5]) / s)
    torch.testing.assert_close(adv[4:], torch.zeros(4))  # constant group: no gradient


def test_eps_is_added_to_the_std() -> None:
    # group [0, 2]: mean 1, unbiased std sqrt(2); eps = 0.5 -> +-1 / (sqrt(2) + 0.5)
    adv = group_advantages(torch.tensor([0.0, 2.0]), group_size=2, eps=0.5)
    expected = 1.0 / (2.0**0.5 + 0.5)
    torch.testing.assert_close(adv, torch.tensor([-expected, expected]))


def test_dr_grpo_only_centres() -> None:
    r = torch.tensor([3.0, 1.0, 0.0, 0.0])
    adv = group_advantages(r, group_size=2, norm_by_std=False)
    torch.testing.assert_close(adv, torch.tensor([1.0, -1.0, 0.0, 0.0]))


def test_std_normalisation_upweights_nearly_unanimous_groups() -> None:
    """Dr. GRPO's argument: one right answer out of 4 gets a bigger push under GRPO."""
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    grpo = group_advantages(r, 4, eps=0.0)
    dr = group_advantages(r, 4, norm_by_std=False)
    # group 0: mean 1/4, std sqrt(3/16 * 4/3)=1/2 -> 0.75/0.5 = 1.5; group 1: 0.5/sqrt(1/3)
    assert grpo[0].item() == pytest.approx(1.5)
    assert grpo[4].item() == pytest.approx(0.5 * 3**0.5)
    assert dr[0].item() == pytest.approx(0.75) and dr[4].item() == pytest.approx(0.5)


def test_constant_group_is_exactly_zero_despite_round_off() -> None:
    # float32 mean of seven 0.1s is not exactly 0.1; the group must still give exact zeros.
    r = torch.full((7,), 0.1)
    for norm in (True, False):
        for eps in (0.0, 1e-6):
            adv = group_advantages(r, 7, norm_by_std=norm, eps=eps)
            assert torch.equal(adv, torch.zeros(7)), (norm, eps, adv)


def test_invalid_rows_leave_group_statistics() -> None:
    r = torch.tensor([1.0, 0.0, 100.0, 0.0])
    valid = torch.tensor([True, True, False, True])
    adv = group_advantages(r, group_size=4, norm_by_std=False, valid=valid)
    # mean over the valid rows (1 + 0 + 0) / 3; the invalid row gets exactly 0
    torch.testing.assert_close(adv, torch.tensor([2 / 3, -1 / 3, 0.0, -1 / 3]))


def test_invalid_rows_leave_the_std_too() -> None:
    r = torch.tensor([1.0, 0.0, -50.0, 0.0])
    valid = torch.tensor([True, True, False, True])
    adv = group_advantages(r, group_size=4, eps=0.0, valid=valid)
    # valid [1, 0, 0]: mean 1/3, unbiased var ((2/3)^2 + 2 (1/3)^2) / 2 = 1/3
    s = (1 / 3) ** 0.5
    torch.testing.assert_close(adv, torch.tensor([2 / 3 / s, -1 / 3 / s, 0.0, -1 / 3 / s]))


def test_groups_with_one_or_no_valid_member_get_zero() -> None:
    lone = group_advantages(torch.tensor([1.0, 5.0]), 2, valid=torch.tensor([True, False]))
    torch.testing.assert_close(lone, torch.zeros(2))
    none = group_advantages(torch.tensor([1.0, 5.0]), 2, valid=torch.tensor([False, False]))
    torch.testing.assert_close(none, torch.zeros(2))
    # valid members all equal -> zero, even though an invalid row differs
    same = group_advantages(torch.tensor([3.0, 3.0, 9.0]), 3,
                            valid=torch.tensor([True, True, False]))
    torch.testing.assert_close(same, torch.zeros(3))


def test_group_size_one_gives_zero() -> None:
    torch.testing.assert_close(group_advantages(torch.tensor([1.0, 2.0, 3.0]), 1),
                               torch.zeros(3))


def test_empty_batch() -> None:
    assert group_advantages(torch.zeros(0), 4).shape == (0,)
    assert zero_std_group_fraction(torch.zeros(0), 4) == 0.0


def test_bad_shapes_raise() -> None:
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(torch.zeros(4), group_size=3)
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(torch.zeros(4), group_size=0)
    with pytest.raises(ValueError, match="valid"):
        group_advantages(torch.zeros(4), 2, valid=torch.ones(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="groups of 4"):
        zero_std_group_fraction(torch.zeros(6), 4)


def test_zero_std_fraction() -> None:
    r = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    assert zero_std_group_fraction(r, 2) == pytest.approx(2 / 3)
    assert zero_std_group_fraction(torch.tensor([0.0, 1.0, 1.0, 0.0]), 2) == 0.0
    assert zero_std_group_fraction(torch.full((6,), 0.1), 3) == 1.0
