"""`grpo report`: figures, summary, diagnosis and a censoring-aware length estimate.

``build_report(targets)`` loads runs (ids, a sweep id, W&B runs), aggregates per step with
numpy, and writes ``report.html`` (self-contained), ``report.md`` and the PNG figures into one
directory, returned to the caller.
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
    from grpo_cli.report.model import RunView

__all__ = ["build_report", "analyse_run"]

# scipy.stats and matplotlib take seconds to import on a busy machine: they are imported
# only once the targets have loaded, so a mistyped id fails at once.


def analyse_run(run: RunData) -> RunView:
    """Per-step table, window summary, KM estimate and findings for one loaded run."""
    from grpo_cli.report.aggregate import heatmap_for, late_rows, step_table
    from grpo_cli.report.censoring import cap_advice, kaplan_meier
    from grpo_cli.report.diagnosis import diagnose
    from grpo_cli.report.model import RunView
    from grpo_cli.report.summary import summarize

    table = step_table(run)
    summary = summarize(run, table)
    km = advice = note = None
    if run.rollouts is not None and len(run.rollouts):
        lengths, truncated, steps = late_rows(run.rollouts)
        if truncated.all():
            note = "every completion of the last 10% of steps was truncated"
        else:
            km = kaplan_meier(lengths, truncated, steps)
            cap = int(summary.cap_late) if math.isfinite(summary.cap_late) else None
            advice = cap_advice(km, cap)
    else:
        note = "no rollout rows (a W&B-only run or a run without rollouts/)"
    return RunView(run, table, summary, diagnose(summary, advice), heatmap_for(run, table),
                   km, advice, note)


def build_report(
    targets: Sequence[str],
    out: Path | str | None = None,
    runs_dir: Path | str | None = None,
) -> Path:
    """Write the report for ``targets`` and return its directory.

    ``out`` defaults to ``<runs root>/reports/<name>/`` (name: the run or sweep id). Unknown or
    malformed ids raise :class:`ConfigError`.
    """
    started = time.perf_counter()
    loaded = load_targets(list(targets), runs_dir)
    from grpo_cli.report.figures import draw_all, smoothing_window
    from grpo_cli.report.model import Report
    from grpo_cli.report.render import render_html, render_markdown

    views = [analyse_run(run) for run in loaded.runs]
    groups: dict[str, list[RunView]] = {}
    for view in views:
        groups.setdefault(view.run.group, []).append(view)
    longest = max(len(v.table) for v in views)
    title = "GRPO length report: " + (loaded.name if len(views) > 1
                                      else display_name(views[0].run))
    report = Report(title=title, targets=list(targets), views=views, groups=groups,
                    smoothing=smoothing_window(longest), notes=loaded.notes,
                    generated=time.strftime("%Y-%m-%d %H:%M:%S"))
    folder = Path(out) if out is not None else runs_root(runs_dir) / "reports" / loaded.name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--out {folder}: cannot create the directory ({e.strerror})") from None
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"--out {folder}: not writable")
    report.figures = draw_all(report, folder)
    report.elapsed_s = time.perf_counter() - started
    (folder / "report.md").write_text(render_markdown(report), encoding="utf-8")
    (folder / "report.html").write_text(render_html(report, folder), encoding="utf-8")
    return folder
