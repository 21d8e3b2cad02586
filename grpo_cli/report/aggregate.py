"""Per-step aggregates of rollout rows with numpy (bincount, one lexsort): no per-row Python.

The per-step table merges these with metrics.jsonl (or W&B history): the rollouts are exact
and fill what the metrics lack; the metrics add what rollouts cannot give (correlations within
prompt groups, the cap in force, timing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from grpo_cli.report.load import Histograms, Rollouts, RunData
from grpo_cli.telemetry.length_metrics import grouped_length_stats, grouped_variance_split

MAX_HEATMAP_BINS = 48  # enough to see the shape, few enough to read a bin's width

# Columns of the per-step table every later stage may use (NaN where unknown).
STEP_COLUMNS = (
    "length/mean", "length/p10", "length/p50", "length/p90", "length/clip_ratio",
    "length/correct_mean", "length/incorrect_mean", "reward/mean", "reward/std",
    "reward/truncated_mean", "reward/terminated_mean", "accuracy",
    "corr/reward_length_spearman", "corr/within_group_spearman", "max_len", "perf/step_s",
    "completions", "val/length/mean", "val/accuracy",  # the probe (every trainer.val_every)
    "length/between_prompt_frac", "length/within_group_std",  # where length variance lives
    "entropy/truncated_mean", "entropy/finished_mean", "entropy/correct_mean",
    "entropy/incorrect_mean", "entropy/first_quarter_mean", "entropy/last_quarter_mean",
    "length/max", "length/max_over_median",  # the rollout's long tail: longest vs median
    "perf/rollout_tail_frac",
)


@dataclass
class Heatmap:
    """``share[b, j]``: share of step ``steps[j]``'s completions in length bin ``b``."""

    steps: np.ndarray
    edges: np.ndarray  # bin edges on the length axis (tokens), len = bins + 1
    share: np.ndarray
    source: str  # "rollouts" | "W&B histograms"
    cap_offset: float  # where a cap of C tokens is drawn: C + cap_offset (top of C's bin)


@dataclass(frozen=True)
class WindowSpec:
    """The early/late windows: a share of the run's steps (``10%``) or a number of steps."""

    fraction: float | None = 0.10
    steps: int | None = None

    def size(self, n_steps: int) -> int:
        """Steps per window for a run of ``n_steps``: at least 1, at most the run."""
        if self.steps is not None:
            return max(1, min(self.steps, n_steps)) if n_steps else 1
        return max(1, int(n_steps * (self.fraction or 0.10) + 1e-9))

    @property
    def label(self) -> str:
        """``10% of steps`` / ``10 steps`` (what table headers and captions say)."""
        if self.steps is not None:
            return f"{self.steps} step{'s' if self.steps != 1 else ''}"
        return f"{100 * (self.fraction or 0.10):g}% of steps"

    @property
    def cli(self) -> str:
        """How ``grpo report --window`` spells it."""
        return str(self.steps) if self.steps is not None else f"{100 * (self.fraction or 0.1):g}%"


DEFAULT_WINDOW = WindowSpec()


def parse_window(text: str | None) -> WindowSpec:
    """``10%`` -> 10% of the steps; ``10`` -> 10 steps. ValueError on anything else."""
    if text is None or not str(text).strip():
        return DEFAULT_WINDOW
    t = str(text).strip()
    try:
        if t.endswith("%"):
            value = float(t[:-1])
            if not 0 < value <= 50:
                raise ValueError
            return WindowSpec(fraction=value / 100)
        steps = int(t)
        if steps < 1:
            raise ValueError
        return WindowSpec(fraction=None, steps=steps)
    except ValueError:
        raise ValueError(f"--window {t!r}: expected a number of steps (10) or a share of the "
                         "run up to half of it (10%)") from None


def window(n_steps: int, spec: WindowSpec = DEFAULT_WINDOW) -> int:
    """Steps in the early/late windows: 10% of the run by default (as `grpo sweep`'s table),
    at least 1."""
    return spec.size(n_steps)


def step_table(run: RunData) -> pd.DataFrame:
    """One row per step with :data:`STEP_COLUMNS`: metrics first, rollouts fill the gaps."""
    frame = run.metrics.copy()
    if "accuracy" not in frame:
        for key in ("reward/correct_mean", "reward/accuracy_mean"):
            if key in frame:  # a grader's component, when no rollouts give `correct`
                frame["accuracy"] = frame[key]
                break
    if run.rollouts is not None and len(run.rollouts):
        derived = rollout_step_table(run.rollouts)
        frame = derived.combine_first(frame) if frame.empty else frame.combine_first(derived)
        for col in ("accuracy", "reward/terminated_mean", "completions"):
            if derived[col].notna().any():  # exact from rows; metrics lack these keys
                frame[col] = derived[col].reindex(frame.index)
    if "reward/terminated_mean" not in frame and {"reward/mean", "reward/truncated_mean",
                                                  "length/clip_ratio"} <= set(frame):
        clip = frame["length/clip_ratio"]
        frame["reward/terminated_mean"] = (
            (frame["reward/mean"] - clip * frame["reward/truncated_mean"]) / (1 - clip)
        ).where(clip < 1)
    for col in STEP_COLUMNS:
        if col not in frame:
            frame[col] = np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = frame["length/max"] / frame["length/p50"]
    frame["length/max_over_median"] = ratio.where(np.isfinite(ratio))
    if frame["max_len"].isna().all():
        cap = (run.config.get("data") or {}).get("max_response_length")
        if isinstance(cap, (int, float)):
            frame["max_len"] = float(cap)
    frame.index.name = "step"
    return frame.sort_index()


def rollout_step_table(r: Rollouts) -> pd.DataFrame:
    """Length, clip, reward and accuracy per step from the rows, vectorised (the loop's own
    statistics, one group per step)."""
    steps, inv = np.unique(r.step, return_inverse=True)
    stats = grouped_length_stats(inv.reshape(-1), steps.shape[0], r.length, r.truncated,
                                 r.reward, r.correct)
    longest = np.zeros(steps.shape[0])
    np.maximum.at(longest, inv.reshape(-1), np.asarray(r.length, dtype=np.float64))
    stats["length/max"] = longest
    if r.prompt_id is not None:  # stores of every version have it; hand-built ones may not
        stats.update(grouped_variance_split(inv.reshape(-1), steps.shape[0], r.prompt_id,
                                            r.length))
    return pd.DataFrame(stats, index=pd.Index(steps.astype(np.int64), name="step"))


def rollout_heatmap(r: Rollouts, caps: np.ndarray | None = None) -> Heatmap:
    """Share of completions per (length bin, step) over one set of edges for the whole run.

    Fixed edges up to the largest cap or length keep the rows comparable when a schedule
    changes the cap. Bins are whole tokens wide: bin k holds lengths k*w+1 .. (k+1)*w, drawn
    between k*w+0.5 and (k+1)*w+0.5, so a cap of C tokens is the top edge of C's bin.
    """
    steps, inv, b, edges = length_bins(r, caps)
    bins = len(edges) - 1
    counts = np.bincount(inv * bins + b, minlength=steps.shape[0] * bins)
    counts = counts.reshape(steps.shape[0], bins).T.astype(np.float64)
    share = counts / np.maximum(counts.sum(axis=0, keepdims=True), 1)
    return Heatmap(steps, edges, share, "rollouts", 0.5)


def length_bins(r: Rollouts, caps: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The heat maps' binning: (steps [S], each row's step index [N], each row's length bin
    [N], bin edges [B+1]); whole-token bins up to the largest cap or length."""
    steps, inv = np.unique(r.step, return_inverse=True)
    top = float(r.length.max()) if len(r) else 1.0
    if caps is not None and np.isfinite(caps).any():
        top = max(top, float(np.nanmax(caps)))
    top = max(top, 1.0)
    width = max(1, math.ceil(top / MAX_HEATMAP_BINS))
    bins = math.ceil(top / width)
    b = np.clip((r.length.astype(np.int64) - 1) // width, 0, bins - 1)
    edges = np.arange(bins + 1, dtype=np.float64) * width + 0.5
    return steps, inv.reshape(-1), b, edges


def histogram_heatmap(h: Histograms) -> Heatmap:
    """The logged per-step histograms re-binned onto one set of edges (bin centres)."""
    top = max(float(e[-1]) for e in h.edges)
    width = max(1.0, math.ceil(top / MAX_HEATMAP_BINS))
    bins = max(1, math.ceil(top / width))
    order = np.argsort(h.steps, kind="stable")
    share = np.zeros((bins, len(order)))
    for j, i in enumerate(order):  # one numpy op per step, not per completion
        centres = (h.edges[i][:-1] + h.edges[i][1:]) / 2
        idx = np.minimum((centres // width).astype(np.int64), bins - 1)
        col = np.bincount(idx, h.counts[i], minlength=bins)
        share[:, j] = col / max(col.sum(), 1)
    steps = np.asarray(h.steps, dtype=np.int64)[order]
    return Heatmap(steps, np.arange(bins + 1, dtype=np.float64) * width, share,
                   "W&B histograms", 0.0)


def heatmap_for(run: RunData, table: pd.DataFrame) -> Heatmap | None:
    if run.rollouts is not None and len(run.rollouts):
        return rollout_heatmap(run.rollouts, table["max_len"].to_numpy(dtype=np.float64))
    if run.histograms is not None:
        return histogram_heatmap(run.histograms)
    return None


def late_rows(r: Rollouts, spec: WindowSpec = DEFAULT_WINDOW
              ) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Lengths and truncation flags of the late window (the KM estimate's input)."""
    uniq = np.unique(r.step)
    w = window(uniq.shape[0], spec)
    first = int(uniq[-w])
    mask = r.step >= first
    return r.length[mask], r.truncated[mask], (first, int(uniq[-1]))
