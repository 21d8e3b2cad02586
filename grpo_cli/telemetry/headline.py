"""A run's headline numbers: length, clip ratio and reward over the last 10% of its steps.

One definition shared by `grpo sweep`'s summary table and `grpo ls`, so both show the same
numbers for the same run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

# (metrics.jsonl key, short column name), in table order.
HEADLINE: tuple[tuple[str, str], ...] = (
    ("length/mean", "len"), ("length/clip_ratio", "clip"), ("reward/mean", "reward"))


def tail(metrics: Sequence[Mapping[str, Any]]) -> Sequence[Mapping[str, Any]]:
    """The last 10% of the step rows (at least one; empty for no rows)."""
    return metrics[-max(1, len(metrics) // 10):] if metrics else metrics


def final_means(metrics: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """``{"len": .., "clip": .., "reward": ..}``: each key's mean over :func:`tail`, None where
    those steps never logged it (non-numeric values are ignored)."""
    rows = tail(metrics)
    out: dict[str, float | None] = {}
    for key, name in HEADLINE:
        vals = [float(v) for m in rows if isinstance(v := m.get(key), (int, float))
                and not isinstance(v, bool) and math.isfinite(v)]
        out[name] = sum(vals) / len(vals) if vals else None
    return out
