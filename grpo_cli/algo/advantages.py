"""Group-relative advantages (GRPO and Dr. GRPO). Pure tensor functions.

Completions of one step are laid out grouped: rows ``g*G .. g*G+G-1`` belong to prompt ``g``.
"""

from __future__ import annotations

import torch


def _grouped(x: torch.Tensor, group_size: int) -> torch.Tensor:
    if group_size < 1 or x.numel() % group_size != 0:
        raise ValueError(f"batch of {x.numel()} is not a whole number of groups of {group_size}")
    return x.reshape(-1, group_size)  # [num_groups, G]


def group_advantages(
    rewards: torch.Tensor,  # [B]
    group_size: int,
    norm_by_std: bool = True,
    eps: float = 1e-6,
    valid: torch.Tensor | None = None,  # [B] bool; False rows leave the group statistics
) -> torch.Tensor:  # [B]
    """GRPO: (R - mean) / (std + eps); Dr. GRPO (``norm_by_std=False``): R - mean.

    The std is unbiased (Bessel-corrected), as in TRL and veRL. Dr. GRPO drops it because
    dividing by a small std up-weights groups that are almost all right or all wrong. A group
    with constant reward (or a single valid member) gets zero advantage: no gradient.
    Invalid rows get advantage 0.
    """
    r = _grouped(rewards.float(), group_size)  # [g, G]
    v = torch.ones_like(r, dtype=torch.bool) if valid is None else _grouped(valid, group_size)
    vf = v.float()
    count = vf.sum(dim=1, keepdim=True)  # [g, 1]
    mean = (r * vf).sum(dim=1, keepdim=True) / count.clamp(min=1)
    centred = (r - mean) * vf
    if norm_by_std:
        std = ((centred**2).sum(dim=1, keepdim=True) / (count - 1).clamp(min=1)).sqrt()
        # A constant group is all zeros already; skipping the division keeps eps=0 NaN-free.
        centred = torch.where(std > 0, centred / (std + eps), torch.zeros_like(centred))
    centred = torch.where(count > 1, centred, torch.zeros_like(centred))
    return centred.reshape(-1)


def zero_std_group_fraction(rewards: torch.Tensor, group_size: int) -> float:
    """Share of groups whose rewards are all equal (TRL's ``frac_reward_zero_std``)."""
    r = _grouped(rewards.float(), group_size)
    if r.shape[0] == 0:
        return 0.0
    flat = (r.max(dim=1).values - r.min(dim=1).values) == 0
    return float(flat.float().mean())
