"""Turn a reward function's scores into the reward GRPO optimises.

Order: the task reward (the function's ``overall``, or a weighted sum of its components when
``reward.weights`` is set), then DAPO's soft overlong punishment, then a length-aware term
(``length.penalty``). Every added term is returned as a component so it is recorded and logged
on its own (``reward/<name>_mean``, a rollout column).
"""

from __future__ import annotations

import numpy as np
import torch

from grpo_cli.config.schema import LENGTH_PENALTIES, LengthConfig, RewardConfig
from grpo_cli.errors import RewardContractError
from grpo_cli.rewards.loader import Scores
from grpo_cli.rewards.shaping import (
    cosine_length_reward,
    kimi_length_reward,
    linear_length_penalty,
    overlong_penalty,
)


def combine_rewards(
    scores: Scores,
    lengths: np.ndarray,  # [N] generated tokens
    truncated: np.ndarray,  # [N] bool, from the finish reason
    cap: int,
    group_size: int,
    step: int,
    reward_cfg: RewardConfig,
    length_cfg: LengthConfig,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Final rewards [N] and the components this function added."""
    added: dict[str, np.ndarray] = {}
    if reward_cfg.weights:
        missing = sorted(set(reward_cfg.weights) - set(scores.components))
        if missing:
            raise RewardContractError(f"reward.weights names {missing}, but the reward "
                                      f"function returns components {sorted(scores.components)}")
        rewards = sum(w * scores.components[k] for k, w in reward_cfg.weights.items())
        rewards = np.asarray(rewards, dtype=np.float64)
    else:
        rewards = scores.overall.astype(np.float64)
    lens = torch.as_tensor(lengths, dtype=torch.float32)
    if length_cfg.overlong_buffer > 0:
        term = overlong_penalty(lens, cap, length_cfg.overlong_buffer,
                                length_cfg.overlong_penalty_factor).numpy()
        added["overlong_penalty"] = term
        rewards = rewards + term
    if length_cfg.penalty != "none" and step >= length_cfg.penalty_warmup_steps:
        term = length_cfg.penalty_weight * _length_term(scores, lens, truncated, cap,
                                                        group_size, length_cfg)
        added["length_penalty"] = term
        rewards = rewards + term
    return rewards, added


def _length_term(scores: Scores, lens: torch.Tensor, truncated: np.ndarray, cap: int,
                 group_size: int, cfg: LengthConfig) -> np.ndarray:
    if cfg.penalty == "linear":
        return linear_length_penalty(lens, cap).numpy()
    if np.isnan(scores.correct).all():
        raise RewardContractError(f"length.penalty={cfg.penalty} needs a reward that reports "
                                  "correctness (a `correct` or `accuracy` component)")
    correct = torch.as_tensor(np.nan_to_num(scores.correct) >= 0.5)
    if cfg.penalty == "cosine":
        c = cfg.cosine
        return cosine_length_reward(lens, correct, torch.as_tensor(truncated), cap,
                                    c.r0_correct, c.rL_correct, c.r0_wrong, c.rL_wrong,
                                    c.r_exceed).numpy()
    if cfg.penalty == "kimi":
        return kimi_length_reward(lens, correct, group_size).numpy()
    raise ValueError(f"length.penalty={cfg.penalty}: allowed {', '.join(LENGTH_PENALTIES)}")
