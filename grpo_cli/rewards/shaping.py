"""Length shaping terms and cap schedules: pure functions of generated-token lengths.

Formulas: DAPO's soft overlong punishment (Yu et al. 2025), the cosine length-scaled reward
(Yeo et al. 2025), Kimi k1.5's group length reward, and staged caps (DeepScaleR, ThinkPrune).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def overlong_penalty(
    lengths: torch.Tensor, max_len: int, buffer: int, factor: float = 1.0
) -> torch.Tensor:  # [B]
    """0 up to L - B, then linear to -factor at L, -factor beyond L.

    ``buffer`` must satisfy 0 < B <= L; a buffer of 0 means "disabled" and is handled by the
    caller (no penalty term at all).
    """
    if not 0 < buffer <= max_len:
        raise ValueError(f"length.overlong_buffer={buffer}: must be in (0, max_len={max_len}]")
    lengths = lengths.float()
    start = max_len - buffer
    ramp = (start - lengths) / buffer * factor
    out = torch.where(lengths <= start, torch.zeros_like(lengths), ramp)
    return torch.where(lengths > max_len, torch.full_like(lengths, -factor), out)


def _cos_fn(t: torch.Tensor, total: float, start: float, end: float) -> torch.Tensor:
    """CosFn(t, T, a, b) = b + (a - b)/2 (1 + cos(t pi / T)): a at t=0, b at t=T."""
    return end + 0.5 * (start - end) * (1.0 + torch.cos(t * math.pi / total))


def cosine_length_reward(
    lengths: torch.Tensor,
    correct: torch.Tensor,
    truncated: torch.Tensor,
    max_len: int,
    r0_correct: float = 2.0,
    rL_correct: float = 1.0,
    r0_wrong: float = -10.0,
    rL_wrong: float = 0.0,
    r_exceed: float = -10.0,
) -> torch.Tensor:  # [B]
    """Yeo et al.: correct answers earn more when short, wrong ones lose less when long."""
    t = lengths.float().clamp(max=max_len)
    right = _cos_fn(t, max_len, r0_correct, rL_correct)
    wrong = _cos_fn(t, max_len, r0_wrong, rL_wrong)
    out = torch.where(correct.bool(), right, wrong)
    return torch.where(truncated.bool(), torch.full_like(out, r_exceed), out)


def kimi_length_reward(
    lengths: torch.Tensor, correct: torch.Tensor, group_size: int
) -> torch.Tensor:  # [B]
    """Kimi k1.5: lambda = 0.5 - (len - min)/(max - min) per group; wrong: min(0, lambda)."""
    if lengths.numel() % group_size != 0:
        raise ValueError(f"batch of {lengths.numel()} is not a whole number of groups")
    x = lengths.float().reshape(-1, group_size)
    lo = x.min(dim=1, keepdim=True).values
    hi = x.max(dim=1, keepdim=True).values
    span = hi - lo
    lam = 0.5 - (x - lo) / span.clamp(min=1e-9)
    lam = torch.where(span > 0, lam, torch.zeros_like(lam)).reshape(-1)
    return torch.where(correct.bool(), lam, lam.clamp(max=0.0))


def linear_length_penalty(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """-len / max_len: 0 for an empty answer, -1 at the cap."""
    return -lengths.float() / max_len


def cap_at_step(
    schedule: Sequence[Sequence[int]] | None, step: int, default: int, mode: str = "step"
) -> int:
    """The response cap in force at ``step``.

    ``schedule`` is a list of (start_step, cap) stages. ``step`` mode: the last stage whose
    start <= step (staged caps, DeepScaleR / ThinkPrune); ``linear`` mode: interpolate between
    neighbouring stages (a ramp). Before the first stage, or with no schedule: ``default``.
    """
    stages = [(int(a), int(b)) for a, b in schedule or ()]
    for i, (start, value) in enumerate(stages):
        if i and start < stages[i - 1][0]:
            raise ValueError(f"length.schedule[{i}]: steps must be non-decreasing")
        if value <= 0:
            raise ValueError(f"length.schedule[{i}]: cap {value} must be positive")
    if mode not in ("step", "linear"):
        raise ValueError(f"length.schedule_mode={mode}: allowed step, linear")
    cap = default
    for i, (start, value) in enumerate(stages):
        if start > step:
            break
        cap = value
        if mode == "linear" and i + 1 < len(stages) and stages[i + 1][0] > step:
            nxt_start, nxt_cap = stages[i + 1]
            cap = linear_ramp_cap(step, start, nxt_start, value, nxt_cap)
    return cap


def linear_ramp_cap(step: int, start_step: int, end_step: int, start_cap: int,
                    end_cap: int) -> int:
    """Cap moving linearly from ``start_cap`` to ``end_cap`` between two steps."""
    if end_step <= start_step:
        return end_cap if step >= end_step else start_cap
    frac = min(max((step - start_step) / (end_step - start_step), 0.0), 1.0)
    return int(round(start_cap + frac * (end_cap - start_cap)))
