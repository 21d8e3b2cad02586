"""Group advantages against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from grpo_cli.algo.advantages import gfpo_keep_mask, group_advantages, zero_std_group_fraction


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


def test_rloo_subtracts_the_mean_of_the_other_members() -> None:
    # group [3, 1, 0, 0]: baselines (1+0+0)/3, (3+0+0)/3, (3+1+0)/3, (3+1+0)/3
    r = torch.tensor([3.0, 1.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0])
    adv = group_advantages(r, group_size=4, norm_by_std=False, estimator="rloo")
    torch.testing.assert_close(adv, torch.tensor([3 - 1 / 3, 1 - 1.0, -4 / 3, -4 / 3,
                                                  0.0, 0.0, 0.0, 0.0]))


def test_rloo_keeps_a_length_penalty_at_its_scale_where_grpo_rescales_it() -> None:
    """Arora & Zanette's rewards for lengths [10, 20, 30, 40], all correct: GRPO's std
    division gives the same advantages for alpha = 0.2 and 0.02; RLOO scales with alpha."""
    from grpo_cli.rewards.shaping import arora_zanette_reward

    lengths, correct = torch.tensor([10, 20, 30, 40]), torch.ones(4, dtype=torch.bool)
    out = {}
    for alpha in (0.2, 0.02):
        r = arora_zanette_reward(lengths, correct, 4, alpha=alpha)
        out["grpo", alpha] = group_advantages(r, 4)
        out["rloo", alpha] = group_advantages(r, 4, norm_by_std=False, estimator="rloo")
    grpo = torch.tensor([1.146, 0.431, -0.431, -1.146])
    torch.testing.assert_close(out["grpo", 0.2], grpo, atol=1e-3, rtol=0)
    torch.testing.assert_close(out["grpo", 0.02], grpo, atol=1e-3, rtol=0)
    rloo = torch.tensor([0.0781, 0.0293, -0.0293, -0.0781])
    torch.testing.assert_close(out["rloo", 0.2], rloo, atol=1e-4, rtol=0)
    torch.testing.assert_close(out["rloo", 0.02], rloo / 10, atol=1e-5, rtol=0)


def test_rloo_leaves_invalid_rows_out_of_the_others() -> None:
    # valid [4, 2, 0] of [4, 2, 0, 9]: baselines (2+0)/2, (4+0)/2, (4+2)/2; row 3 gets 0
    r = torch.tensor([4.0, 2.0, 0.0, 9.0])
    valid = torch.tensor([True, True, True, False])
    adv = group_advantages(r, 4, norm_by_std=False, valid=valid, estimator="rloo")
    torch.testing.assert_close(adv, torch.tensor([3.0, 0.0, -3.0, 0.0]))


def test_rloo_with_std_or_an_unknown_estimator_is_refused() -> None:
    r = torch.tensor([1.0, 0.0])
    with pytest.raises(ValueError, match="norm_adv_by_std=false"):
        group_advantages(r, 2, estimator="rloo")
    with pytest.raises(ValueError, match="allowed grpo, rloo"):
        group_advantages(r, 2, estimator="ppo")


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


# --- GFPO (Shrivastava et al. 2025): filter the group, advantages over the kept subset --------


def test_gfpo_keeps_the_k_shortest_per_group_ties_to_the_earlier_row() -> None:
    lengths = torch.tensor([5, 3, 9, 3, 4, 4, 4, 1])
    kept = gfpo_keep_mask(lengths, torch.zeros(8), group_size=4, keep=2)
    # group 0: the two 3s (rows 1, 3); group 1: the 1 (row 7), then the first 4 (row 4)
    assert kept.tolist() == [False, True, False, True, True, False, False, True]
    assert gfpo_keep_mask(lengths, torch.zeros(8), 4, keep=4).all()


def test_gfpo_reward_per_token_keeps_the_most_efficient() -> None:
    rewards = torch.tensor([1.0, 1.0, 0.0, 0.5])
    lengths = torch.tensor([10, 5, 2, 1])
    # reward / length = 0.1, 0.2, 0.0, 0.5 -> the best two: rows 3 (0.5) and 1 (0.2)
    kept = gfpo_keep_mask(lengths, rewards, 4, keep=2, metric="reward_per_token")
    assert kept.tolist() == [False, True, False, True]


def test_gfpo_advantages_are_over_the_kept_subset_and_zero_elsewhere() -> None:
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0])
    kept = torch.tensor([True, True, False, False, True, False, True, False])
    adv = group_advantages(rewards, 4, eps=0.0, valid=kept)
    # group 0 kept (1, 0): mean 0.5, unbiased std sqrt(0.5) -> +-0.5/0.7071 = +-0.7071;
    # the two dropped 1s get 0 (over all four the mean would be 0.75).
    # group 1 kept (1, 0) likewise: rows 4, 6 -> +0.7071, -0.7071
    h = 0.5 / 0.5**0.5
    torch.testing.assert_close(adv, torch.tensor([h, -h, 0, 0, h, 0, -h, 0]))
    same = group_advantages(rewards[:4], 4, valid=torch.tensor([True, False, True, True]))
    assert same.tolist() == [0.0, 0.0, 0.0, 0.0]  # the kept rewards are all 1: no signal


def test_gfpo_keep_mask_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="gfpo_keep=5"):
        gfpo_keep_mask(torch.zeros(4), torch.zeros(4), 4, keep=5)
    with pytest.raises(ValueError, match="gfpo_metric='tokens'"):
        gfpo_keep_mask(torch.zeros(4), torch.zeros(4), 4, keep=2, metric="tokens")
    with pytest.raises(ValueError, match="groups of 3"):
        gfpo_keep_mask(torch.zeros(4), torch.zeros(4), 3, keep=2)
