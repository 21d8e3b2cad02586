"""Headline numbers per run, always over windows of steps (first and last 10%), never one step.

Per-step means move by about +-15% with the batch's prompt mix on the toy task, so a single
step says little; window means are what the diagnosis compares.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from grpo_cli.report.aggregate import window
from grpo_cli.report.load import RunData


@dataclass
class RunSummary:
    label: str
    run_id: str
    steps: int
    window: int  # steps per early/late window
    first_step: int
    last_step: int
    len_initial: float
    len_final: float
    len_change_pct: float
    clip_early: float
    clip_late: float
    clip_mean: float  # over the whole run
    reward_early: float
    reward_late: float
    acc_early: float
    acc_late: float
    corr_batch_early: float
    corr_batch_late: float
    corr_within_early: float
    corr_within_late: float
    correct_len_early: float
    correct_len_late: float
    incorrect_len_early: float
    incorrect_len_late: float
    reward_truncated: float  # mean over steps that had truncated completions
    reward_terminated: float  # mean over the same steps, completions that ended with EOS
    reward_std: float  # mean per-step reward std: the scale the reward gap is judged on
    cap_early: float
    cap_late: float
    wall_s: float
    loss_agg_mode: str | None
    status: str | None

    @property
    def incorrect_change_pct(self) -> float:
        return pct_change(self.incorrect_len_early, self.incorrect_len_late)

    @property
    def correct_change_pct(self) -> float:
        return pct_change(self.correct_len_early, self.correct_len_late)


def pct_change(before: float, after: float) -> float:
    if not (math.isfinite(before) and math.isfinite(after)) or before == 0:
        return math.nan
    return 100.0 * (after - before) / before


def _window_mean(col: pd.Series, head: bool, w: int) -> float:
    part = col.iloc[:w] if head else col.iloc[-w:]
    part = part.dropna()
    return float(part.mean()) if len(part) else math.nan


def summarize(run: RunData, table: pd.DataFrame) -> RunSummary:
    """Early/late window means of the per-step table, plus run-wide facts."""
    n = len(table)
    w = window(n)

    def early(col: str) -> float:
        return _window_mean(table[col], True, w)

    def late(col: str) -> float:
        return _window_mean(table[col], False, w)

    both = table[["reward/truncated_mean", "reward/terminated_mean"]].dropna()
    return RunSummary(
        label=run.label, run_id=run.run_id, steps=n, window=w,
        first_step=int(table.index[0]) if n else 0, last_step=int(table.index[-1]) if n else 0,
        len_initial=early("length/mean"), len_final=late("length/mean"),
        len_change_pct=pct_change(early("length/mean"), late("length/mean")),
        clip_early=early("length/clip_ratio"), clip_late=late("length/clip_ratio"),
        clip_mean=_nanmean(table["length/clip_ratio"]),
        reward_early=early("reward/mean"), reward_late=late("reward/mean"),
        acc_early=early("accuracy"), acc_late=late("accuracy"),
        corr_batch_early=early("corr/reward_length_spearman"),
        corr_batch_late=late("corr/reward_length_spearman"),
        corr_within_early=early("corr/within_group_spearman"),
        corr_within_late=late("corr/within_group_spearman"),
        correct_len_early=early("length/correct_mean"),
        correct_len_late=late("length/correct_mean"),
        incorrect_len_early=early("length/incorrect_mean"),
        incorrect_len_late=late("length/incorrect_mean"),
        reward_truncated=_nanmean(both["reward/truncated_mean"]),
        reward_terminated=_nanmean(both["reward/terminated_mean"]),
        reward_std=_nanmean(table["reward/std"]),
        cap_early=early("max_len"), cap_late=late("max_len"),
        wall_s=wall_time(run, table), loss_agg_mode=run.loss_agg_mode,
        status=run.meta.get("status"),
    )


def _nanmean(col: pd.Series) -> float:
    values = col.to_numpy(dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else math.nan


def wall_time(run: RunData, table: pd.DataFrame) -> float:
    """End minus start from meta.json; else the sum of per-step times."""
    start, end = run.meta.get("start_time"), run.meta.get("end_time")
    if isinstance(start, (int, float)) and isinstance(end, (int, float)) and end >= start:
        return float(end - start)
    step_s = table["perf/step_s"].dropna()
    return float(step_s.sum()) if len(step_s) else math.nan
