"""What a report holds once computed; figures and renderers only read these."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from grpo_cli.report.aggregate import DEFAULT_WINDOW, Heatmap, WindowSpec
from grpo_cli.report.censoring import CapAdvice, KMEstimate
from grpo_cli.report.diagnosis import Finding
from grpo_cli.report.load import RunData
from grpo_cli.report.stats import Comparison
from grpo_cli.report.summary import ArmSummary, RunSummary


@dataclass
class RunView:
    run: RunData
    table: pd.DataFrame  # per step, aggregate.STEP_COLUMNS
    summary: RunSummary
    findings: list[Finding]
    heatmap: Heatmap | None = None
    km: KMEstimate | None = None
    advice: CapAdvice | None = None
    km_note: str | None = None  # why there is no estimate


@dataclass
class ArmView:
    """An arm: the runs that differ only in seed, summarised over its seeds."""

    label: str  # what the tables call it
    views: list[RunView]
    summary: ArmSummary
    findings: list[Finding]  # one diagnosis for the arm (findings of most seeds)
    km: KMEstimate | None = None  # the seeds' last-window completions pooled
    advice: CapAdvice | None = None
    km_note: str | None = None

    @property
    def n(self) -> int:
        return len(self.views)


@dataclass
class ArmComparison:
    """One measure's change (first -> last): ``b`` minus ``a`` over seeds (Welch)."""

    a: str
    b: str
    result: Comparison
    measure: str = "len_change_pct"  # a RunSummary field or property (summary.COMPARED)


@dataclass
class Figure:
    filename: str  # beside report.html
    title: str
    caption: str
    run_id: str | None = None  # None: a figure comparing all runs


@dataclass
class Report:
    title: str
    targets: list[str]
    views: list[RunView]
    groups: dict[str, list[RunView]]  # arms: runs that differ only in seed share a group
    smoothing: int  # rolling-mean window of the figures, in steps
    arms: list[ArmView] = field(default_factory=list)
    comparisons: list[ArmComparison] = field(default_factory=list)
    window: WindowSpec = DEFAULT_WINDOW  # the early / late windows of every table
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    generated: str = ""
    elapsed_s: float = 0.0
