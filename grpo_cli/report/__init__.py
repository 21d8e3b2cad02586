"""`grpo report`: figures, summary, diagnosis and a censoring-aware length estimate.

``build_report(targets)`` loads runs (ids, a sweep id, W&B runs), aggregates per step with
numpy, summarises each arm (runs that differ only in seed) over its seeds, and writes
``report.html`` (self-contained), ``report.md`` and the figures into one directory, returned
to the caller.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from grpo_cli.errors import ConfigError
from grpo_cli.report.load import RunData, display_name, load_targets
from grpo_cli.telemetry.store import runs_root

if TYPE_CHECKING:
    from grpo_cli.report.aggregate import WindowSpec
    from grpo_cli.report.model import ArmComparison, ArmView, RunView

__all__ = ["build_report", "analyse_run", "analyse_arm", "compare_arms"]
# All pairs of arms up to this many arms; beyond it, each arm against the first (baseline).
ALL_PAIRS_UP_TO = 4

# scipy.stats and matplotlib take seconds to import on a busy machine: they are imported
# only once the targets have loaded, so a mistyped id fails at once.


def _km(lengths, truncated, steps, cap_late: float, window_label: str):
    from grpo_cli.report.censoring import cap_advice, kaplan_meier

    if truncated.all():
        return None, None, f"every completion of the last {window_label} was truncated"
    km = kaplan_meier(lengths, truncated, steps)
    cap = int(cap_late) if math.isfinite(cap_late) else None
    return km, cap_advice(km, cap), None


def analyse_run(run: RunData, window: WindowSpec | None = None) -> RunView:
    """Per-step table, window summary, KM estimate and findings for one loaded run."""
    from grpo_cli.report.aggregate import DEFAULT_WINDOW, heatmap_for, late_rows, step_table
    from grpo_cli.report.diagnosis import diagnose
    from grpo_cli.report.model import RunView
    from grpo_cli.report.summary import summarize

    spec = window or DEFAULT_WINDOW
    table = step_table(run)
    summary = summarize(run, table, spec)
    km = advice = note = None
    if run.rollouts is not None and len(run.rollouts):
        km, advice, note = _km(*late_rows(run.rollouts, spec), summary.cap_late, spec.label)
    else:
        note = "no rollout rows (a W&B-only run or a run without rollouts/)"
    return RunView(run, table, summary, diagnose(summary, advice, run.config),
                   heatmap_for(run, table), km, advice, note)


def analyse_arm(views: list[RunView], window: WindowSpec | None = None) -> ArmView:
    """One arm (runs differing only in seed): numbers over seeds, one diagnosis, one KM
    estimate on the seeds' pooled last-window completions."""
    import numpy as np

    from grpo_cli.report.aggregate import DEFAULT_WINDOW, late_rows
    from grpo_cli.report.diagnosis import arm_findings, diagnose
    from grpo_cli.report.load import SAME_CONFIG
    from grpo_cli.report.model import ArmView
    from grpo_cli.report.summary import summarize_arm

    spec = window or DEFAULT_WINDOW
    first = views[0]
    if len(views) == 1:
        label = display_name(first.run)
    else:
        label = "same config" if first.run.group == SAME_CONFIG else first.run.group
    seeds = [v.run.seed for v in views]
    summary = summarize_arm(label, [v.summary for v in views], seeds)
    if len(views) == 1:
        km, advice, note = first.km, first.advice, first.km_note
    else:
        rows = [late_rows(v.run.rollouts, spec) for v in views
                if v.run.rollouts is not None and len(v.run.rollouts)]
        if rows:
            steps = (min(r[2][0] for r in rows), max(r[2][1] for r in rows))
            km, advice, note = _km(np.concatenate([r[0] for r in rows]),
                                   np.concatenate([r[1] for r in rows]), steps,
                                   summary.mean.cap_late, spec.label)
            if len(rows) < len(views):
                note = f"{len(views) - len(rows)} seed(s) without rollout rows left out"
        else:
            km = advice = None
            note = "no rollout rows (a W&B-only run or a run without rollouts/)"
    pooled = diagnose(summary.mean, advice, first.run.config)
    findings = arm_findings([v.findings for v in views], pooled, seeds)
    return ArmView(label, views, summary, findings, km, advice, note)


def compare_arms(arms: list[ArmView]) -> list[ArmComparison]:
    """Each :data:`~grpo_cli.report.summary.COMPARED` change (first -> last) of each pair of
    arms, later minus earlier (or each arm minus the first, beyond :data:`ALL_PAIRS_UP_TO`
    arms), Welch over seeds. A probe measure only where every seed of both arms has it."""
    from itertools import combinations

    from grpo_cli.report.model import ArmComparison
    from grpo_cli.report.stats import welch
    from grpo_cli.report.summary import COMPARED

    def change(arm: ArmView, key: str) -> list[float]:
        return [getattr(v.summary, key) for v in arm.views]

    pairs = (list(combinations(arms, 2)) if len(arms) <= ALL_PAIRS_UP_TO
             else [(arms[0], b) for b in arms[1:]])
    out = []
    for key, _ in COMPARED:
        for a, b in pairs:
            xa, xb = change(a, key), change(b, key)
            if key != "len_change_pct" and not all(map(math.isfinite, xa + xb)):
                continue
            out.append(ArmComparison(a.label, b.label, welch(xa, xb), key))
    return out


def build_report(
    targets: Sequence[str],
    out: Path | str | None = None,
    runs_dir: Path | str | None = None,
    window: str | WindowSpec | None = None,
    formats: str | Sequence[str] | None = None,
) -> Path:
    """Write the report for ``targets`` and return its directory.

    ``out`` defaults to ``<runs root>/reports/<name>/`` (name: the run or sweep id).
    ``window``: the early / late windows, ``"10%"`` of the steps (default) or ``"10"`` steps.
    ``formats``: figure files, any of png, svg, pdf (``"svg,pdf"``; default png); the page
    embeds SVG when chosen, else PNG.
    Unknown or malformed ids and a bad window raise :class:`ConfigError`.
    """
    started = time.perf_counter()
    from grpo_cli.report.aggregate import WindowSpec, parse_window

    try:
        spec = window if isinstance(window, WindowSpec) else parse_window(window)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    from grpo_cli.report.style import parse_formats  # a bad --format fails before loading

    parse_formats(formats)
    loaded = load_targets(list(targets), runs_dir)
    from grpo_cli.report.figures import draw_all, smoothing_window
    from grpo_cli.report.model import Report
    from grpo_cli.report.render import render_html, render_markdown

    views = [analyse_run(run, spec) for run in loaded.runs]
    groups: dict[str, list[RunView]] = {}
    for view in views:
        groups.setdefault(view.run.group, []).append(view)
    arms = [analyse_arm(members, spec) for members in groups.values()]
    longest = max(len(v.table) for v in views)
    title = "GRPO length report: " + (loaded.name if len(views) > 1
                                      else display_name(views[0].run))
    report = Report(title=title, targets=list(targets), views=views, groups=groups,
                    smoothing=smoothing_window(longest), arms=arms,
                    comparisons=compare_arms(arms) if len(arms) > 1 else [], window=spec,
                    notes=loaded.notes, generated=time.strftime("%Y-%m-%d %H:%M:%S"))
    folder = Path(out) if out is not None else runs_root(runs_dir) / "reports" / loaded.name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--out {folder}: cannot create the directory ({e.strerror})") from None
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"--out {folder}: not writable")
    report.figures = draw_all(report, folder, parse_formats(formats))
    report.elapsed_s = time.perf_counter() - started
    (folder / "report.md").write_text(render_markdown(report), encoding="utf-8")
    (folder / "report.html").write_text(render_html(report, folder), encoding="utf-8")
    return folder
