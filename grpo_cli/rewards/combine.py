"""Turn a reward function's scores into the reward GRPO optimises.

Order: the task reward (the function's ``overall``, or a weighted sum of its components when
``reward.weights`` is set), then DAPO's soft overlong punishment, then a length-aware term
(``length.penalty``), then ProRL's stop-properly penalty on truncated completions (last, on
the whole reward). Every added term is returned as a component so it is recorded and logged
on its own (``reward/<name>_mean``, a rollout column).

The group-relative rewards (``shorter_better``, ``arora_zanette``, ``l1_exact``, ``l1_max``)
are whole rewards in their papers, of the form 1[correct] + (a length part). They replace
the correctness part of the task reward: the term added is (paper's r) - 1[correct], times
``length.penalty_weight``, so with the default accuracy reward and weight 1 the optimised
reward is exactly the paper's r.
"""

from __future__ import annotations

import numpy as np
import torch

from grpo_cli.config.schema import LENGTH_PENALTIES, LengthConfig, RewardConfig
from grpo_cli.errors import RewardContractError
from grpo_cli.rewards.loader import Scores
from grpo_cli.rewards.shaping import (
    arora_zanette_reward,
    cosine_length_reward,
    kimi_length_reward,
    l1_exact_reward,
    l1_max_reward,
    linear_length_penalty,
    overlong_penalty,
    shorter_better_reward,
    stop_properly_penalty,
)

# Paper rewards of the form 1[correct] + (length part): they need every row's correctness.
GROUP_RELATIVE = ("shorter_better", "arora_zanette", "l1_exact", "l1_max")


def combine_rewards(
    scores: Scores,
    lengths: np.ndarray,  # [N] generated tokens
    truncated: np.ndarray,  # [N] bool, from the finish reason
    cap: int,
    group_size: int,
    step: int,
    reward_cfg: RewardConfig,
    length_cfg: LengthConfig,
    budgets: np.ndarray | None = None,  # [N] each row's prompt budget (data.length_budget)
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
                                                        group_size, length_cfg, budgets)
        added["length_penalty"] = term
        rewards = rewards + term
    coef, value = length_cfg.stop_penalty_coef, length_cfg.stop_penalty_value
    if coef is not None or value is not None:
        new = stop_properly_penalty(torch.as_tensor(rewards), torch.as_tensor(truncated),
                                    coef, value).double().numpy()
        added["stop_penalty"] = new - rewards
        rewards = new
    return rewards, added


def _length_term(scores: Scores, lens: torch.Tensor, truncated: np.ndarray, cap: int,
                 group_size: int, cfg: LengthConfig,
                 budgets: np.ndarray | None = None) -> np.ndarray:
    if cfg.penalty == "linear":
        return linear_length_penalty(lens, cap).numpy()
    if cfg.penalty in GROUP_RELATIVE:
        return _paper_reward(scores, lens, group_size, cfg, budgets)
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


def _paper_reward(scores: Scores, lens: torch.Tensor, group_size: int, cfg: LengthConfig,
                  budgets: np.ndarray | None) -> np.ndarray:
    """(The paper's whole reward) - 1[correct] for the group-relative rewards."""
    unknown = int(np.isnan(scores.correct).sum())
    if unknown:
        raise RewardContractError(
            f"length.penalty={cfg.penalty} needs every completion's correctness (a `correct` "
            f"or `accuracy` component); the reward left {unknown} of {len(scores.correct)} "
            "unknown")
    correct = torch.as_tensor(scores.correct >= 0.5)
    if cfg.penalty == "shorter_better":
        sb = cfg.shorter_better
        r = shorter_better_reward(lens, correct, group_size, sb.alpha, sb.beta)
    elif cfg.penalty == "arora_zanette":
        r = arora_zanette_reward(lens, correct, group_size, cfg.arora_zanette.alpha)
    else:
        if budgets is None:
            raise RewardContractError(f"length.penalty={cfg.penalty} needs a length budget in "
                                      "every prompt: set data.length_budget=[min,max]")
        n = torch.as_tensor(budgets, dtype=torch.float32)
        if cfg.penalty == "l1_exact":
            r = l1_exact_reward(lens, correct, n, cfg.l1.alpha)
        else:
            r = l1_max_reward(lens, correct, n, cfg.l1.alpha, cfg.l1.delta)
    return (r.double() - correct.double()).numpy()
