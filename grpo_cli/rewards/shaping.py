"""Length shaping terms and cap schedules: pure functions of generated-token lengths.

Formulas (LITERATURE.md): DAPO's soft overlong punishment (Yu et al. 2025), the cosine
length-scaled reward (Yeo et al. 2025), Kimi k1.5's group length reward, a plain linear
penalty, and staged caps (DeepScaleR grows them, ThinkPrune tightens them). Lengths are
generated tokens (EOS included, no padding) as 1-D tensors [B]; results are float32 [B].
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

SCHEDULE_MODES = ("step", "linear")


def _lengths(lengths: torch.Tensor) -> torch.Tensor:
    if lengths.dim() != 1:
        raise ValueError(f"lengths must be 1-D [B], got shape {tuple(lengths.shape)}")
    return lengths.float()


def _positive_cap(max_len: int) -> None:
    if not max_len > 0:
        raise ValueError(f"max_len={max_len}: the response cap must be > 0")


def overlong_penalty(
    lengths: torch.Tensor,  # [B]
    max_len: int,
    buffer: int,
    factor: float = 1.0,
) -> torch.Tensor:  # [B]
    """DAPO soft overlong punishment, added to the task reward.

    0 if len <= L - B; ((L - B) - len) / B * factor if L - B < len <= L (reaching -factor at
    the cap); -factor if len > L. verl's scaled form min(-(len - (L - B)) / B * f, 0) is the
    same inside the cap. ``buffer`` must satisfy 0 < B <= L; ``length.overlong_buffer=0``
    means "disabled" and the caller then adds no term at all (this function rejects it).
    """
    if not 0 < buffer <= max_len:
        raise ValueError(f"length.overlong_buffer={buffer}: must be in (0, max_len={max_len}]")
    x = _lengths(lengths)  # [B]
    start = max_len - buffer
    ramp = (start - x) / buffer * factor  # [B]
    out = torch.where(x <= start, torch.zeros_like(x), ramp)
    return torch.where(x > max_len, torch.full_like(x, -factor), out)


def _cos_fn(t: torch.Tensor, total: float, start: float, end: float) -> torch.Tensor:
    """CosFn(t, T, a, b) = b + (a - b)/2 (1 + cos(t pi / T)): a at t=0, b at t=T."""
    return end + 0.5 * (start - end) * (1.0 + torch.cos(t * math.pi / total))


def cosine_length_reward(
    lengths: torch.Tensor,  # [B]
    correct: torch.Tensor,  # [B] bool
    truncated: torch.Tensor,  # [B] bool
    max_len: int,
    r0_correct: float = 2.0,
    rL_correct: float = 1.0,
    r0_wrong: float = -10.0,
    rL_wrong: float = 0.0,
    r_exceed: float = -10.0,
) -> torch.Tensor:  # [B]
    """Cosine length-scaled reward (Yeo et al. 2025, "Demystifying Long CoT Reasoning").

    Correct: CosFn(len, L, r0_correct, rL_correct), short answers earn more; wrong:
    CosFn(len, L, r0_wrong, rL_wrong), long wrong answers lose less (keep thinking);
    truncated: r_exceed whatever the answer. Lengths past L that were not truncated are read
    as L. Yeo et al. warn that r0_correct < rL_correct makes length grow explosively.
    """
    _positive_cap(max_len)
    t = _lengths(lengths).clamp(max=max_len)  # [B]
    right = _cos_fn(t, max_len, r0_correct, rL_correct)  # [B]
    wrong = _cos_fn(t, max_len, r0_wrong, rL_wrong)  # [B]
    out = torch.where(correct.bool(), right, wrong)
    return torch.where(truncated.bool(), torch.full_like(out, r_exceed), out)


def kimi_length_reward(
    lengths: torch.Tensor,  # [B]
    correct: torch.Tensor,  # [B] bool
    group_size: int,
) -> torch.Tensor:  # [B]
    """Kimi k1.5 group length reward: shorter than the group's midpoint earns, longer costs.

    Per group, lambda_i = 0.5 - (len_i - min) / (max - min); correct: lambda_i, wrong:
    min(0, lambda_i) (a wrong answer is never rewarded for being short). All zero when every
    length in the group is equal. Rows are grouped as rows g*G .. g*G+G-1.
    """
    if group_size < 1 or lengths.numel() % group_size != 0:
        raise ValueError(
            f"batch of {lengths.numel()} lengths is not a whole number of groups of {group_size}"
        )
    x = _lengths(lengths).reshape(-1, group_size)  # [g, G]
    lo = x.amin(dim=1, keepdim=True)  # [g, 1]
    hi = x.amax(dim=1, keepdim=True)  # [g, 1]
    span = hi - lo  # [g, 1]
    lam = 0.5 - (x - lo) / torch.where(span > 0, span, torch.ones_like(span))  # [g, G]
    lam = torch.where(span > 0, lam, torch.zeros_like(lam)).reshape(-1)  # [B]
    return torch.where(correct.bool().reshape(-1), lam, lam.clamp(max=0.0))


def linear_length_penalty(lengths: torch.Tensor, max_len: int) -> torch.Tensor:  # [B]
    """-len / max_len: 0 for an empty answer, -1 at the cap (a plain, correctness-blind term;
    scaled by ``length.penalty_weight`` by the caller)."""
    _positive_cap(max_len)
    return -_lengths(lengths) / max_len


def _stages(schedule: Sequence[Sequence[int]] | None) -> list[tuple[int, int]]:
    """Validated (start_step, cap) pairs: steps non-decreasing, caps positive."""
    stages: list[tuple[int, int]] = []
    for i, stage in enumerate(schedule or ()):
        if len(stage) != 2:
            raise ValueError(f"length.schedule[{i}]={list(stage)}: expected [step, max_len]")
        start, cap = int(stage[0]), int(stage[1])
        if stages and start < stages[-1][0]:
            raise ValueError(f"length.schedule[{i}]: steps must be non-decreasing")
        if cap <= 0:
            raise ValueError(f"length.schedule[{i}]: cap {cap} must be positive")
        stages.append((start, cap))
    return stages


def cap_at_step(
    schedule: Sequence[Sequence[int]] | None, step: int, default: int, mode: str = "step"
) -> int:
    """The response cap in force at ``step``.

    ``schedule`` is a list of (start_step, cap) stages sorted by step. ``step`` mode (staged
    caps, DeepScaleR 8k -> 16k -> 24k / ThinkPrune): the cap of the last stage whose
    start_step <= step (a later stage with the same start wins). ``linear`` mode: the same
    stages, but the cap moves linearly from one stage to the next (:func:`linear_ramp_cap`).
    Before the first stage, or with no (or an empty) schedule: ``default``.
    """
    stages = _stages(schedule)
    if mode not in SCHEDULE_MODES:
        raise ValueError(f"length.schedule_mode={mode!r}: allowed {', '.join(SCHEDULE_MODES)}")
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
    """Cap moving linearly from ``start_cap`` at ``start_step`` to ``end_cap`` at
    ``end_step`` (rounded to the nearest token), constant outside that range."""
    if end_step < start_step:
        raise ValueError(f"length.schedule: ramp steps must be non-decreasing, got "
                         f"{start_step} -> {end_step}")
    if start_cap <= 0 or end_cap <= 0:
        raise ValueError(f"length.schedule: caps must be positive, got {start_cap} -> {end_cap}")
    if end_step == start_step:
        return end_cap if step >= end_step else start_cap
    frac = min(max((step - start_step) / (end_step - start_step), 0.0), 1.0)
    return int(round(start_cap + frac * (end_cap - start_cap)))
