"""How scores, weights and length terms combine into the optimised reward."""

from __future__ import annotations

import numpy as np
import pytest

from grpo_cli.config.schema import LengthConfig, RewardConfig
from grpo_cli.errors import RewardError
from grpo_cli.rewards.combine import combine_rewards
from grpo_cli.rewards.loader import Scores


def scores(correct: list[float] | None = None) -> Scores:
    acc = np.array(correct if correct is not None else [1.0, 0.0, 1.0, 0.0])
    fmt = np.array([1.0, 1.0, 0.0, 0.0])
    known = acc if correct is not None else np.full(4, np.nan)
    return Scores(overall=acc.copy(), correct=known,
                  components={"accuracy": acc, "format": fmt})


LENGTHS = np.array([10, 18, 20, 20])
TRUNC = np.array([False, False, False, True])


def test_plain_reward_passes_through() -> None:
    r, added = combine_rewards(scores([1, 0, 1, 0]), LENGTHS, TRUNC, 20, 2, 0, RewardConfig(),
                               LengthConfig())
    np.testing.assert_allclose(r, [1, 0, 1, 0])
    assert added == {}


def test_weights_and_overlong_penalty() -> None:
    cfg = RewardConfig(weights={"accuracy": 1.0, "format": 0.5})
    r, added = combine_rewards(scores([1, 0, 1, 0]), LENGTHS, TRUNC, 20, 2, 0, cfg,
                               LengthConfig(overlong_buffer=4))
    # overlong: 10 -> 0, 18 -> -0.5, 20 -> -1, 20 -> -1
    np.testing.assert_allclose(added["overlong_penalty"], [0, -0.5, -1, -1])
    np.testing.assert_allclose(r, [1.5, 0.0, 0.0, -1.0])
    with pytest.raises(RewardError, match="reward.weights names"):
        combine_rewards(scores(), LENGTHS, TRUNC, 20, 2, 0, RewardConfig(weights={"style": 1}),
                        LengthConfig())


def test_length_penalty_waits_for_warmup_and_needs_correctness() -> None:
    cfg = LengthConfig(penalty="kimi", penalty_weight=0.5, penalty_warmup_steps=3)
    _, before = combine_rewards(scores([1, 0, 1, 0]), LENGTHS, TRUNC, 20, 2, 2, RewardConfig(),
                                cfg)
    assert "length_penalty" not in before
    r, after = combine_rewards(scores([1, 0, 1, 0]), LENGTHS, TRUNC, 20, 2, 3, RewardConfig(), cfg)
    # group 0 (10 correct, 18 wrong): lambda 0.5, -0.5 -> wrong keeps min(0, -0.5)
    np.testing.assert_allclose(after["length_penalty"], [0.25, -0.25, 0.0, 0.0])
    np.testing.assert_allclose(r, [1.25, -0.25, 1.0, 0.0])
    with pytest.raises(RewardError, match="needs a reward that reports correctness"):
        combine_rewards(scores(None), LENGTHS, TRUNC, 20, 2, 5, RewardConfig(), cfg)
    lin, _ = combine_rewards(scores(None), LENGTHS, TRUNC, 20, 2, 5, RewardConfig(),
                             LengthConfig(penalty="linear"))
    np.testing.assert_allclose(lin, scores(None).overall - LENGTHS / 20)


def test_group_relative_rewards_replace_the_correctness_part() -> None:
    # accuracy reward; groups of 2: (10 right, 18 wrong), (20 right, 20 wrong)
    cfg = LengthConfig(penalty="shorter_better")
    cfg.shorter_better.alpha, cfg.shorter_better.beta = 2.0, 0.1
    r, added = combine_rewards(scores([1, 0, 1, 0]), LENGTHS, TRUNC, 20, 2, 0, RewardConfig(),
                               cfg)
    # SOL 10 and 20: 2 - 0 = 2; 0 - 0.1*8 = -0.8; 2 - 0 = 2; 0 - 0 = 0 (the paper's r)
    np.testing.assert_allclose(r, [2.0, -0.8, 2.0, 0.0], atol=1e-6)
    # the recorded term is r - 1[correct]
    np.testing.assert_allclose(added["length_penalty"], [1.0, -0.8, 1.0, 0.0], atol=1e-6)


def test_l1_needs_budgets_and_uses_them() -> None:
    cfg = LengthConfig(penalty="l1_exact")
    cfg.l1.alpha = 0.05
    with pytest.raises(RewardError, match="data.length_budget"):
        combine_rewards(scores([1, 0, 1, 0]), LENGTHS, TRUNC, 20, 2, 0, RewardConfig(), cfg)
    r, _ = combine_rewards(scores([1, 0, 1, 0]), LENGTHS, TRUNC, 20, 2, 0, RewardConfig(), cfg,
                           budgets=np.array([10, 10, 16, 16]))
    # 1 - 0; 0 - 0.05*8 = -0.4; 1 - 0.05*4 = 0.8; 0 - 0.05*4 = -0.2
    np.testing.assert_allclose(r, [1.0, -0.4, 0.8, -0.2], atol=1e-6)


def test_group_relative_rewards_need_every_rows_correctness() -> None:
    part = scores([1.0, 0.0, np.nan, 0.0])
    for penalty in ("shorter_better", "arora_zanette"):
        with pytest.raises(RewardError, match=f"length.penalty={penalty} needs every "
                                              r"completion's correctness.*1 of 4 unknown"):
            combine_rewards(part, LENGTHS, TRUNC, 20, 2, 0, RewardConfig(),
                            LengthConfig(penalty=penalty))


def test_stop_penalty_comes_last_and_is_recorded() -> None:
    # overlong (buffer 4 at cap 20): 0, -0.5, -1, -1; then the truncated row 3 (reward
    # 0 - 1 = -1) is multiplied by 0.5 -> -0.5, a change of +0.5
    r, added = combine_rewards(scores([1, 0, 1, 0]), LENGTHS, TRUNC, 20, 2, 0, RewardConfig(),
                               LengthConfig(overlong_buffer=4, stop_penalty_coef=0.5))
    np.testing.assert_allclose(r, [1.0, -0.5, 0.0, -0.5])
    np.testing.assert_allclose(added["stop_penalty"], [0.0, 0.0, 0.0, 0.5])
    fixed, added = combine_rewards(scores([1, 0, 1, 1]), LENGTHS, TRUNC, 20, 2, 0,
                                   RewardConfig(), LengthConfig(stop_penalty_value=-2.0))
    np.testing.assert_allclose(fixed, [1.0, 0.0, 1.0, -2.0])  # whatever the answer
    np.testing.assert_allclose(added["stop_penalty"], [0.0, 0.0, 0.0, -3.0])
