"""DAPO's dynamic sampling (Yu et al. 2025, arXiv 2503.14476), as pure functions: which
prompt groups carry a learning signal, and which of them fill a step's batch.

A group whose rewards are all equal gets zero advantage under every group-relative
estimator, so it adds nothing to the gradient but still dilutes per-sequence averages.
DAPO drops such groups and samples more prompts until the batch is full. Checked against
veRL's ``recipe/dapo/dapo_ray_trainer.py`` (``filter_groups``: keep a prompt whose metric has
std > 0, or a single sample) and EasyR1's online filtering (``filter_low < mean < filter_high``).
Rows are grouped: ``g*G .. g*G+G-1`` belong to group ``g``.
"""

from __future__ import annotations

import numpy as np


def informative_groups(
    values: np.ndarray,  # [B] the filter key of each completion
    group_size: int,
    low: float | None = None,
    high: float | None = None,
) -> np.ndarray:  # [B/G] bool
    """Groups that carry signal. Without a band: the group's values are not all equal
    (exact comparison, as veRL's std > 0 on a {0, 1} reward). With a band (EasyR1's
    ``filter_low``/``filter_high``): low < group mean < high, an unset bound open. NaN
    values never make a group informative."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or group_size < 1 or v.size % group_size:
        raise ValueError(f"{v.shape} values are not whole groups of {group_size}")
    g = v.reshape(-1, group_size)  # [groups, G]
    finite = np.isfinite(g).all(axis=1)
    if low is None and high is None:
        return finite & (g.max(axis=1) > g.min(axis=1))
    mean = g.mean(axis=1)
    inside = np.ones(len(g), dtype=bool)
    if low is not None:
        inside &= mean > low
    if high is not None:
        inside &= mean < high
    return finite & inside


def fill_groups(informative: np.ndarray, want: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``want`` groups a batch trains on, given every sampled group's flag [groups] in
    sampling order: the first ``want`` informative ones. When there are fewer, the batch is
    filled with the earliest uninformative groups, which the caller trains with no loss (the
    batch keeps its shape, so every rank runs the same micro-batches).

    Returns (group indices [want] in sampling order, carries loss [want] bool).
    """
    flags = np.asarray(informative, dtype=bool)
    if flags.size < want:
        raise ValueError(f"{flags.size} groups sampled, {want} wanted")
    good = np.flatnonzero(flags)[:want]
    filler = np.flatnonzero(~flags)[: want - good.size]
    chosen = np.sort(np.concatenate([good, filler]))
    return chosen, flags[chosen]
