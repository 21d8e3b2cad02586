"""Length against outcome, from the rollout rows with bincounts (no per-row Python):

- accuracy per length bin in the early and the late window ("is a longer completion more or
  less often correct?", as GFPO and "When More is Less" ask);
- per-step length heat maps of the correct and the incorrect completions, and windowed length
  histograms split into correct / incorrect (finished) / truncated;
- the shared colour and axis limits of heat maps drawn side by side.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from grpo_cli.report.aggregate import Heatmap, length_bins, window
from grpo_cli.report.load import Rollouts

LENGTH_BINS = 12  # accuracy-by-length bins: coarse enough for a few hundred rows per bin
MIN_BIN_ROWS = 5  # fewer graded completions in a bin: its accuracy is not drawn
Z95 = 1.959963984540054


@dataclass
class WindowBins:
    """One window's rows per length bin (``edges`` of :class:`AccuracyByLength`)."""

    steps: tuple[int, int]  # first and last step of the window
    n: np.ndarray  # [bins] graded completions (correctness known)
    correct: np.ndarray  # [bins] of them correct
    # The window's length histogram in three parts (rows of unknown grade that finished are
    # in none): finished and correct, finished and incorrect, truncated (whatever the grade).
    finished_correct: np.ndarray
    finished_incorrect: np.ndarray
    truncated: np.ndarray

    @property
    def accuracy(self) -> np.ndarray:
        """Correct / graded per bin; NaN where fewer than MIN_BIN_ROWS rows."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.n >= MIN_BIN_ROWS, self.correct / np.maximum(self.n, 1),
                            np.nan)

    def wilson(self) -> tuple[np.ndarray, np.ndarray]:
        """95% Wilson score interval of each bin's accuracy (NaN where not drawn)."""
        n = np.maximum(self.n, 1).astype(np.float64)
        p = self.correct / n
        z2 = Z95**2
        centre = (p + z2 / (2 * n)) / (1 + z2 / n)
        half = Z95 * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
        ok = self.n >= MIN_BIN_ROWS
        lo, hi = np.minimum(centre - half, p).clip(0, 1), np.maximum(centre + half, p).clip(0, 1)
        return np.where(ok, lo, np.nan), np.where(ok, hi, np.nan)


@dataclass
class AccuracyByLength:
    edges: np.ndarray  # whole-token edges: bin k holds lengths in (edges[k], edges[k+1]]
    early: WindowBins
    late: WindowBins


def length_edges(top: float, bins: int = LENGTH_BINS) -> np.ndarray:
    """``0, w, 2w, ...`` with a whole-token width ``w`` covering lengths up to ``top``."""
    top = max(float(top), 1.0)
    width = max(1, math.ceil(top / bins))
    return np.arange(math.ceil(top / width) + 1, dtype=np.float64) * width


def length_bin(lengths: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index of each length: right-closed ``(e_k, e_k+1]`` as ``pd.cut``, clipped."""
    idx = np.searchsorted(edges, np.asarray(lengths, dtype=np.float64), side="left") - 1
    return np.clip(idx, 0, edges.shape[0] - 2)


def _window_bins(r: Rollouts, mask: np.ndarray, edges: np.ndarray,
                 steps: tuple[int, int]) -> WindowBins:
    k = edges.shape[0] - 1
    known = mask & np.isfinite(r.correct)
    right = known & (r.correct >= 0.5)
    b = length_bin(r.length, edges)

    def count(m: np.ndarray) -> np.ndarray:
        return np.bincount(b[m], minlength=k)

    done = ~r.truncated
    return WindowBins(steps, count(known), count(right), count(right & done),
                      count(known & ~right & done), count(mask & r.truncated))


def accuracy_by_length(r: Rollouts, w: int | None = None,
                       bins: int = LENGTH_BINS) -> AccuracyByLength | None:
    """Accuracy per length bin over the first and the last ``w`` steps (default: 10% of the
    run, as the summary's windows), on one set of edges for both; None without graded rows."""
    if not len(r) or not np.isfinite(r.correct).any():
        return None
    uniq = np.unique(r.step)
    w = min(w or window(uniq.shape[0]), uniq.shape[0])
    early_last, late_first = int(uniq[w - 1]), int(uniq[-w])
    early, late = r.step <= early_last, r.step >= late_first
    edges = length_edges(float(r.length[early | late].max()), bins)
    return AccuracyByLength(
        edges, _window_bins(r, early, edges, (int(uniq[0]), early_last)),
        _window_bins(r, late, edges, (late_first, int(uniq[-1]))))


def outcome_heatmaps(r: Rollouts, caps: np.ndarray | None = None
                     ) -> tuple[Heatmap, Heatmap] | None:
    """Per-step length heat maps of the correct and of the incorrect completions, each cell a
    share of ALL the step's completions (so the two add up to the step's whole heat map; rows
    of unknown correctness are in neither). Bins as :func:`aggregate.rollout_heatmap`."""
    if not len(r) or not np.isfinite(r.correct).any():
        return None
    steps, inv, b, edges = length_bins(r, caps)
    bins = len(edges) - 1
    cell = inv * bins + b
    total = np.bincount(inv, minlength=steps.shape[0]).astype(np.float64)
    known = np.isfinite(r.correct)
    right = known & (r.correct >= 0.5)
    out = []
    for m in (right, known & ~right):
        counts = np.bincount(cell[m], minlength=steps.shape[0] * bins)
        share = counts.reshape(steps.shape[0], bins).T / np.maximum(total, 1)
        out.append(Heatmap(steps, edges, share, "rollouts", 0.5))
    return out[0], out[1]


def shared_color_limits(heatmaps: Sequence[Heatmap]) -> tuple[float, float]:
    """One colour scale for heat maps drawn side by side: 0 to the largest share of any."""
    top = max((float(np.nanmax(h.share)) for h in heatmaps if h.share.size), default=0.0)
    return 0.0, max(top, 1e-9)


def shared_extent(heatmaps: Sequence[Heatmap], caps: Sequence[float] = ()
                  ) -> tuple[tuple[float, float], tuple[float, float]]:
    """Common (x, y) limits: every heat map's steps and bins, and every cap, fit."""
    x0 = min(float(h.steps[0]) for h in heatmaps) - 0.5
    x1 = max(float(h.steps[-1]) for h in heatmaps) + 0.5
    y0 = min(float(h.edges[0]) for h in heatmaps)
    top = max([float(h.edges[-1]) for h in heatmaps]
              + [float(c) + h.cap_offset for c in caps if math.isfinite(c) for h in heatmaps[:1]])
    return (x0, x1), (y0, top * 1.04)


def common_heatmap(r: Rollouts, top: float) -> Heatmap:
    """:func:`aggregate.rollout_heatmap` on edges covering ``top`` tokens, so runs with
    different caps share bins (and so a share means the same in each panel)."""
    from grpo_cli.report.aggregate import rollout_heatmap

    return rollout_heatmap(r, np.array([top], dtype=np.float64))


def reward_is_accuracy(table: pd.DataFrame) -> bool:
    """Binary reward: ``reward/mean == accuracy`` at every step where both are known (and
    there is at least one such step)."""
    if "reward/mean" not in table or "accuracy" not in table:
        return False
    both = table[["reward/mean", "accuracy"]].dropna()
    return bool(len(both)) and bool(np.allclose(both["reward/mean"], both["accuracy"],
                                                rtol=0, atol=1e-6))


# Per-step reward statistics that are not a user's reward component.
_NOT_COMPONENTS = {"reward/mean", "reward/std", "reward/truncated_mean",
                   "reward/terminated_mean", "reward/zero_std_frac"}


def reward_components(table: pd.DataFrame) -> list[str]:
    """The ``reward/<name>_mean`` columns of a per-step table (the user's components and the
    length terms), in the order they appear."""
    return [c for c in table.columns if c.startswith("reward/") and c.endswith("_mean")
            and c not in _NOT_COMPONENTS and table[c].notna().any()]
