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
