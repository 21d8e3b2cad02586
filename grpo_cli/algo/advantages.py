"""Group-relative advantages (GRPO, Dr. GRPO, RLOO, and GFPO's filtered groups). Pure tensor
functions.

Completions of one step are laid out grouped: rows ``g*G .. g*G+G-1`` belong to prompt ``g``.
"""

from __future__ import annotations

import torch

from grpo_cli.config.schema import ADV_ESTIMATORS, GFPO_METRICS


def _grouped(x: torch.Tensor, group_size: int, name: str = "rewards") -> torch.Tensor:
    """[B] -> [B/G, G], with a clear error when the batch is not whole groups."""
    if group_size < 1:
        raise ValueError(f"group_size={group_size}: must be >= 1 (rollout.n)")
    if x.dim() != 1:
        raise ValueError(f"{name} must be 1-D [B], got shape {tuple(x.shape)}")
    if x.numel() % group_size != 0:
        raise ValueError(
            f"batch of {x.numel()} {name} is not a whole number of groups of {group_size}"
        )
    return x.reshape(-1, group_size)  # [num_groups, G]


def _as_float(x: torch.Tensor) -> torch.Tensor:
    """Keep float32/float64 as they are; anything else (ints, bools, bf16) to float32."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def group_advantages(
    rewards: torch.Tensor,  # [B]
    group_size: int,
    norm_by_std: bool = True,
    eps: float = 1e-6,
    valid: torch.Tensor | None = None,  # [B] bool; False rows leave the group statistics
    estimator: str = "grpo",
) -> torch.Tensor:  # [B]
    """GRPO: (R - mean) / (std + eps); Dr. GRPO (``norm_by_std=False``): R - mean; RLOO
    (``estimator="rloo"``, no std): R_i - mean of the group's other members.

    The std is the unbiased (Bessel-corrected, n-1) one, as in TRL (``torch.std``) and veRL.
    Dr. GRPO (Liu et al. 2025) drops it because dividing by a small std up-weights groups that
    are almost all right or all wrong.

    RLOO (Ahmadian et al. 2024; OpenRLHF's ``advantage_estimator=rloo``, which Arora & Zanette
    2025 trained with): the baseline of R_i is (sum_j R_j - R_i) / (G - 1), so the advantage
    is G / (G - 1) * (R_i - mean). Without the std the reward's scale is kept: a length
    penalty of weight alpha moves advantages by ~alpha, where GRPO's std division would
    rescale an all-correct group's length differences to unit size whatever alpha is.

    ``valid=False`` rows (e.g. truncated completions that must not count) are left out of their
    group's mean and std and get advantage 0. A group whose valid rewards are all equal, or that
    has fewer than two valid members, gets exactly 0: it carries no learning signal. Constancy is
    tested exactly (max == min), so float round-off in the mean cannot turn a constant group into
    spurious +-1 advantages when ``eps`` is small.
    """
    if estimator not in ADV_ESTIMATORS:
        raise ValueError(f"algorithm.adv_estimator={estimator!r}: allowed "
                         f"{', '.join(ADV_ESTIMATORS)}")
    if estimator == "rloo" and norm_by_std:
        raise ValueError("algorithm.adv_estimator=rloo: RLOO does not divide by the group "
                         "std; set algorithm.norm_adv_by_std=false")
    r = _grouped(_as_float(rewards), group_size)  # [g, G]
    if valid is None:
        v = torch.ones_like(r, dtype=torch.bool)  # [g, G]
    else:
        if valid.shape != rewards.shape:
            raise ValueError(
                f"valid has shape {tuple(valid.shape)}, rewards {tuple(rewards.shape)}"
            )
        v = _grouped(valid.to(device=r.device, dtype=torch.bool), group_size, "valid")
    vf = v.to(r.dtype)  # [g, G]
    count = vf.sum(dim=1, keepdim=True)  # [g, 1]
    mean = (r * vf).sum(dim=1, keepdim=True) / count.clamp(min=1)  # [g, 1]
    centred = torch.where(v, r - mean, torch.zeros_like(r))  # [g, G]
    hi = torch.where(v, r, torch.full_like(r, -torch.inf)).amax(dim=1, keepdim=True)  # [g, 1]
    lo = torch.where(v, r, torch.full_like(r, torch.inf)).amin(dim=1, keepdim=True)  # [g, 1]
    informative = (count > 1) & (hi > lo)  # [g, 1]
    if norm_by_std:
        var = (centred**2).sum(dim=1, keepdim=True) / (count - 1).clamp(min=1)  # [g, 1]
        centred = centred / (var.sqrt() + eps)
    if estimator == "rloo":  # R_i - (sum - R_i) / (n - 1) = n / (n - 1) * (R_i - mean)
        centred = centred * count / (count - 1).clamp(min=1)
    return torch.where(informative, centred, torch.zeros_like(centred)).reshape(-1)  # [B]


def gfpo_keep_mask(
    lengths: torch.Tensor,  # [B] generated tokens
    rewards: torch.Tensor,  # [B]
    group_size: int,
    keep: int,
    metric: str = "length",
) -> torch.Tensor:  # [B] bool
    """GFPO's filter (Shrivastava et al. 2025, "Sample More to Think Less", arXiv 2508.09726):
    of each group's G completions keep the k that score best and train on those only.

    ``length``: the k shortest (smallest len_i). ``reward_per_token``: the k with the highest
    r_i / len_i (token efficiency). Ties go to the earlier row, so the mask is deterministic.
    The advantages are then computed over the kept subset alone, A_i = (r_i - mean_S(r)) /
    (std_S(r) + eps) for i in S and A_i = 0 outside it: :func:`group_advantages` with
    ``valid`` = this mask.

    Checked against: TRL's ``trl/experimental/gfpo/gfpo_trainer.py`` (``GFPOTrainer.
    _generate_and_score_completions``, a top-k of each group by its filter score; removed
    from TRL since, read at b6ff4a7), whose config inherits GRPO's default ``loss_type="dapo"``
    (token-mean, as conf/length/gfpo.yaml sets).
    """
    if metric not in GFPO_METRICS:
        raise ValueError(f"algorithm.gfpo_metric={metric!r}: allowed {', '.join(GFPO_METRICS)}")
    if not 1 <= keep <= group_size:
        raise ValueError(f"algorithm.gfpo_keep={keep}: must be in [1, rollout.n={group_size}]")
    x = _grouped(_as_float(lengths), group_size, "lengths")  # [g, G]
    if metric == "length":
        score = x  # ascending: shortest first
    else:
        r = _grouped(_as_float(rewards), group_size)  # [g, G]
        score = -(r / x.clamp(min=1))  # ascending: most reward per token first
    order = torch.argsort(score, dim=1, stable=True)  # [g, G]
    kept = torch.zeros_like(x, dtype=torch.bool)
    kept.scatter_(1, order[:, :keep], True)
    return kept.reshape(-1)  # [B]


def zero_std_group_fraction(rewards: torch.Tensor, group_size: int) -> float:
    """Share of groups whose rewards are all equal (TRL's ``frac_reward_zero_std``).

    Such groups get zero advantage and so add no gradient; a rising share means the batch is
    going to waste (what DAPO's dynamic sampling filters out). An empty batch gives 0.0.
    """
    r = _grouped(_as_float(rewards), group_size)  # [g, G]
    if r.shape[0] == 0:
        return 0.0
    flat = r.amax(dim=1) == r.amin(dim=1)  # [g]
    return float(flat.float().mean())
