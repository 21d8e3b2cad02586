"""Headline numbers per run, always over windows of steps (first and last 10% by default, or
``grpo report --window``), never one step; and per arm, the mean over seeds with a 95% interval.

Per-step means move by about +-15% with the batch's prompt mix on the toy task, so a single
step says little; window means are what the diagnosis compares.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import numpy as np
import pandas as pd

from grpo_cli.report.aggregate import DEFAULT_WINDOW, WindowSpec, window
from grpo_cli.report.load import RunData
from grpo_cli.report.stats import Estimate, mean_ci


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
    # natural length (the val/ probe): its mean over the window's steps, else its first / last
    # reading when no probe step falls inside the window
    natural_early: float = math.nan
    natural_late: float = math.nan
    probe_acc_early: float = math.nan  # the probe's accuracy, read the same way
    probe_acc_late: float = math.nan
    # the diagnostics no framework logs (early/late window means; NaN where not recorded):
    # where length variance lives, entropy by outcome and position, the rollout's long tail
    between_early: float = math.nan  # share of length variance between prompts
    between_late: float = math.nan
    ent_trunc_early: float = math.nan  # mean token entropy of truncated completions
    ent_trunc_late: float = math.nan
    ent_finished_early: float = math.nan
    ent_finished_late: float = math.nan
    ent_first_early: float = math.nan  # over each completion's first quarter of tokens
    ent_first_late: float = math.nan
    ent_last_early: float = math.nan  # ... and its last quarter
    ent_last_late: float = math.nan
    tail_late: float = math.nan  # share of sampling time after 90% of completions ended
    max_over_median_late: float = math.nan  # longest completion / median length

    @property
    def incorrect_change_pct(self) -> float:
        return pct_change(self.incorrect_len_early, self.incorrect_len_late)

    @property
    def correct_change_pct(self) -> float:
        return pct_change(self.correct_len_early, self.correct_len_late)

    @property
    def natural_change_pct(self) -> float:
        return pct_change(self.natural_early, self.natural_late)

    @property
    def probe_acc_change(self) -> float:
        """In percentage points: accuracy is a share, so a relative change would mislead."""
        return 100.0 * (self.probe_acc_late - self.probe_acc_early)


def pct_change(before: float, after: float) -> float:
    if not (math.isfinite(before) and math.isfinite(after)) or before == 0:
        return math.nan
    return 100.0 * (after - before) / before


def _window_mean(col: pd.Series, head: bool, w: int) -> float:
    part = col.iloc[:w] if head else col.iloc[-w:]
    part = part.dropna()
    return float(part.mean()) if len(part) else math.nan


def _probe(table: pd.DataFrame, head: bool, w: int, key: str = "val/length/mean") -> float:
    """A probe metric over the window's steps, else its nearest reading (probes are sparse:
    one step in ``trainer.val_every``)."""
    col = table[key]
    part = (col.iloc[:w] if head else col.iloc[-w:]).dropna()
    if len(part):
        return float(part.mean())
    values = col.dropna()
    if not len(values):
        return math.nan
    return float(values.iloc[0] if head else values.iloc[-1])


def summarize(run: RunData, table: pd.DataFrame,
              spec: WindowSpec = DEFAULT_WINDOW) -> RunSummary:
    """Early/late window means of the per-step table, plus run-wide facts."""
    n = len(table)
    w = window(n, spec)

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
        natural_early=_probe(table, True, w), natural_late=_probe(table, False, w),
        probe_acc_early=_probe(table, True, w, "val/accuracy"),
        probe_acc_late=_probe(table, False, w, "val/accuracy"),
        between_early=early("length/between_prompt_frac"),
        between_late=late("length/between_prompt_frac"),
        ent_trunc_early=early("entropy/truncated_mean"),
        ent_trunc_late=late("entropy/truncated_mean"),
        ent_finished_early=early("entropy/finished_mean"),
        ent_finished_late=late("entropy/finished_mean"),
        ent_first_early=early("entropy/first_quarter_mean"),
        ent_first_late=late("entropy/first_quarter_mean"),
        ent_last_early=early("entropy/last_quarter_mean"),
        ent_last_late=late("entropy/last_quarter_mean"),
        tail_late=late("perf/rollout_tail_frac"),
        max_over_median_late=late("length/max_over_median"),
    )


# The headline numbers of an arm, each a mean over seeds with its interval (field, what).
HEADLINE = (
    ("len_initial", "length, first window"), ("len_final", "length, last window"),
    ("len_change_pct", "length change first → last (%)"),
    ("clip_early", "clip ratio, first window"), ("clip_late", "clip ratio, last window"),
    ("reward_early", "reward, first window"), ("reward_late", "reward, last window"),
    ("acc_early", "accuracy, first window"), ("acc_late", "accuracy, last window"),
    ("natural_early", "natural length, first"), ("natural_late", "natural length, last"),
    ("natural_change_pct", "natural length change first → last (%)"),
    ("probe_acc_change", "probe accuracy change first → last (points)"),
)

# What arms are compared on (field, what): the training length always; the probe's natural
# length and accuracy where every seed of both arms has probe readings. The capped training
# length can barely move under a tight cap even when the natural length collapses.
COMPARED = (
    ("len_change_pct", "length change (%)"),
    ("natural_change_pct", "natural length change (%)"),
    ("probe_acc_change", "probe accuracy change (points)"),
)


@dataclass
class ArmSummary:
    """An arm (runs that differ only in seed): each headline number over its seeds."""

    label: str
    seeds: list  # the runs' seeds, in the report's order
    estimates: dict[str, Estimate]  # HEADLINE field -> mean over seeds with its interval
    mean: RunSummary  # every number averaged over the seeds (what the arm's diagnosis reads)

    @property
    def n(self) -> int:
        return len(self.seeds)


def _mean_of(values: list) -> float:
    a = np.asarray([v for v in values if isinstance(v, (int, float))], dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else math.nan


def summarize_arm(label: str, summaries: Sequence[RunSummary], seeds: Sequence) -> ArmSummary:
    """Means over seeds with 95% t intervals; ``mean`` is the seed-averaged RunSummary (its
    step counts are the shortest seed's, so no window claims steps a seed lacks)."""
    first = summaries[0]
    averaged = {}
    for f in fields(RunSummary):
        values = [getattr(s, f.name) for s in summaries]
        if f.name in ("steps", "window", "last_step"):
            averaged[f.name] = min(values)
        elif f.name == "first_step":
            averaged[f.name] = max(values)
        elif isinstance(getattr(first, f.name), float):
            averaged[f.name] = _mean_of(values)
    mean = replace(first, label=label, run_id=", ".join(s.run_id for s in summaries),
                   **averaged)
    estimates = {key: mean_ci([getattr(s, key) for s in summaries]) for key, _ in HEADLINE}
    return ArmSummary(label, list(seeds), estimates, mean)


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
