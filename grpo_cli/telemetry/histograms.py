"""The per-step length histograms sent to W&B: the whole batch and its correct / incorrect
completions over the same fixed edges (see :func:`length_histogram`).

Like ``length/hist`` they are not written to the run store: each is recomputable from the
rollout rows (``response_length``, ``correct``), over ``linspace(0, cap, 33)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from grpo_cli.telemetry.length_metrics import length_histogram

Hist = tuple[np.ndarray, np.ndarray]  # (counts, edges)


def length_histograms(lengths: np.ndarray, correct: np.ndarray | None, max_len: int,
                      prefix: str = "") -> dict[str, Hist]:
    """``{prefix}length/hist`` and, when some completion's correctness is known,
    ``{prefix}length/hist_correct`` / ``{prefix}length/hist_incorrect`` (``correct >= 0.5``
    counts as correct; unknown rows are in neither), all over the same edges, so the two
    split histograms add up to the whole one when every completion is graded."""
    lengths = np.asarray(lengths, dtype=np.float64)
    out = {f"{prefix}length/hist": length_histogram(lengths, max_len)}
    if correct is None:
        return out
    correct = np.asarray(correct, dtype=np.float64)
    known = np.isfinite(correct)
    if not known.any():
        return out
    right = known & (correct >= 0.5)
    out[f"{prefix}length/hist_correct"] = length_histogram(lengths[right], max_len)
    out[f"{prefix}length/hist_incorrect"] = length_histogram(lengths[known & ~right], max_len)
    return out


def pop_histograms(metrics: dict[str, Any]) -> dict[str, Hist]:
    """Take the histograms (``(counts, edges)`` tuples, e.g. the probe's
    ``val/length/hist``) out of a metrics dict, leaving the scalars."""
    keys = [k for k, v in metrics.items() if isinstance(v, tuple)]
    return {k: metrics.pop(k) for k in keys}
