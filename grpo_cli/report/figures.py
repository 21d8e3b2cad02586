"""Figures (PNG, SVG and/or PDF), each readable on its own: title, axis labels with units,
legend; drawn in the paper style of :mod:`grpo_cli.report.style` (column widths, 8-9 pt text).

Per-step values are noisy (the batch's prompt mix), so each curve is drawn as faint raw
points plus a centred rolling mean whose window is stated in the legend. Several runs get one
colour per arm; arms with several seeds are drawn as the mean over seeds with a min-max band.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import PowerNorm  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator, PercentFormatter  # noqa: E402

from grpo_cli.report import outcomes  # noqa: E402
from grpo_cli.report.aggregate import Heatmap  # noqa: E402
from grpo_cli.report.censoring import TARGET_TRUNCATION  # noqa: E402
from grpo_cli.report.load import display_name  # noqa: E402
from grpo_cli.report.model import Figure, Report, RunView  # noqa: E402
from grpo_cli.report.style import (  # noqa: E402
    COLUMN,
    HEIGHT,
    PAGE,
    STYLE,
    page_format,
    save,
    step_span,
)

ONE = (COLUMN, HEIGHT)  # a single-panel figure: one paper column
RAW_ALPHA = 0.25
MAX_COLS = 3  # panels per row in the per-arm grids


def smoothing_window(n_steps: int) -> int:
    """About 5% of the run, odd (1 = no smoothing for short runs, at most 201 steps)."""
    w = max(1, min(200, round(n_steps / 20)))
    return w + 1 if w > 1 and w % 2 == 0 else w  # odd: the centred window is symmetric


def smooth(y: pd.Series, w: int) -> pd.Series:
    return y.rolling(w, center=True, min_periods=1).mean() if w > 1 else y


def _colors(n: int) -> list:
    cmap = plt.get_cmap("tab10" if n <= 10 else "viridis")
    return [cmap(i if n <= 10 else i / max(n - 1, 1)) for i in range(n)]


def _title(ax: plt.Axes, text: str, chars: int = 52, size: float | None = None) -> None:
    """A title wrapped to the axes' width (about ``chars`` characters a line at 9 pt)."""
    import textwrap

    lines = [w for line in text.split("\n") for w in textwrap.wrap(line, chars) or [""]]
    ax.set_title("\n".join(lines), fontsize=size)


def _panel_title(ax: plt.Axes, view: RunView) -> None:
    """A grid panel's title: the run's label, 8 pt, wrapped to a third of the page."""
    _title(ax, view.run.label or view.run.run_id, 30, 8.0)


def _grid(n: int, row_h: float = 1.9, sharey: bool = True) -> tuple[plt.Figure, np.ndarray]:
    """``n`` panels, at most MAX_COLS a row, across the page (one column for one panel);
    unused cells hidden. Axes share x and y."""
    cols = min(MAX_COLS, n)
    rows = math.ceil(n / cols)
    width = COLUMN if n == 1 else PAGE
    fig, axes = plt.subplots(rows, cols, figsize=(width, row_h * rows + 0.5), squeeze=False,
                             sharex=True, sharey=sharey, layout="constrained")
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    return fig, axes


def _smooth_label(w: int) -> str:
    return f"rolling mean over {w} steps" if w > 1 else "per step (too few steps to smooth)"


def _style_handles(w: int, raw: bool = True, seeds: bool = False) -> list:
    """Legend entries explaining the line styles (not tied to one arm)."""
    if w <= 1:  # nothing smoothed: the line is the raw data
        out: list = [Line2D([], [], color="0.3", lw=2, marker="o", ms=2.5,
                            label="per step (too few steps to smooth)")]
    else:
        out = [Line2D([], [], color="0.55", lw=0.8, alpha=0.6, marker="o", ms=2.5,
                      label="raw per step")] if raw else []
        out.append(Line2D([], [], color="0.2", lw=2, label=_smooth_label(w)))
    if seeds:
        out.append(Patch(color="0.2", alpha=0.2, label="arms with several seeds: mean "
                         "line, band = min–max over seeds"))
    return out


def _kinds(report: Report) -> tuple[bool, bool]:
    """(some arm is a single run drawn raw, some arm has several seeds)."""
    sizes = [len(v) for v in report.groups.values()]
    return any(n == 1 for n in sizes), any(n > 1 for n in sizes)


def _who(view: RunView) -> str:
    """The run's label, with its name and id on a second line when the label is neither."""
    return display_name(view.run, "\n")


def _step_axis(ax: plt.Axes) -> None:
    ax.set_xlabel("training step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers


def _no_data(ax: plt.Axes, why: str) -> None:
    ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, color="0.4",
            wrap=True)


# --- series drawing -----------------------------------------------------------------------


def _draw_group(ax: plt.Axes, views: list[RunView], col: str, color, label: str | None,
                w: int, linestyle: str = "-") -> bool:
    """One arm: raw + smoothed for a single run; mean over seeds with a min-max band."""
    series = [v.table[col].dropna() for v in views if col in v.table]  # arms may differ
    series = [s for s in series if len(s)]
    if not series:
        return False
    if len(series) == 1:
        s = series[0]
        if w > 1:
            ax.plot(s.index, s.values, color=color, alpha=RAW_ALPHA, lw=0.8, ls=linestyle,
                    marker="o" if len(s) <= 80 else None, ms=2.5)
        ax.plot(s.index, smooth(s, w).values, color=color, lw=2, ls=linestyle, label=label,
                marker="o" if w <= 1 else None, ms=3)
        return True
    frame = pd.concat([smooth(s, w) for s in series], axis=1)
    mean = frame.mean(axis=1)
    ax.fill_between(frame.index, frame.min(axis=1), frame.max(axis=1), color=color,
                    alpha=0.2, lw=0)
    ax.plot(mean.index, mean.values, color=color, lw=2, ls=linestyle,
            label=None if label is None else f"{label} ({len(series)} seeds)")
    return True


@dataclass
class Panel:
    col: str  # per-step table column
    ylabel: str  # with units
    title: str
    empty: str  # said in the panel when no run has the column
    percent: bool = False
    zero_line: bool = False  # a reference at 0 (correlations: the sign is the point)


def _panel(ax: plt.Axes, report: Report, col: str, ylabel: str, title: str,
           percent: bool = False, empty: str = "no data", zero_line: bool = False) -> bool:
    drawn = False
    colors = _colors(len(report.groups))
    for color, (group, views) in zip(colors, report.groups.items(), strict=True):
        label = views[0].run.label if len(views) == 1 else group
        drawn |= _draw_group(ax, views, col, color, label, report.smoothing)
    if not drawn:
        _no_data(ax, empty)
    elif zero_line:
        ax.axhline(0, color="0.4", lw=0.8)
    _title(ax, title)
    _step_axis(ax)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if percent:
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    return drawn


def _legend(fig: plt.Figure, axes: list[plt.Axes], report: Report,
            extra: list | None = None) -> None:
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    raw, seeds = _kinds(report)
    handles += (extra or []) + _style_handles(report.smoothing, raw, seeds)
    # Below the axes: the figure keeps its width, so the page does not shrink its text.
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), frameon=False,
               ncol=2)


def _panels_figure(report: Report, suptitle: str, panels: list[Panel]) -> plt.Figure:
    n = len(panels)
    cols = min(MAX_COLS, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(COLUMN if n == 1 else PAGE, HEIGHT * rows),
                             squeeze=False, sharex=True)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    for ax, p in zip(flat, panels, strict=False):
        _panel(ax, report, p.col, p.ylabel, p.title if n > 1 else suptitle, p.percent,
               p.empty, p.zero_line)
    if n > 1:
        fig.suptitle(suptitle)
    fig.tight_layout()
    _legend(fig, flat[:n], report)
    return fig


# --- the figures --------------------------------------------------------------------------


def _cell_edges(steps: np.ndarray) -> np.ndarray:
    """x edges of one cell per step, centred on the step."""
    steps = steps.astype(np.float64)
    if steps.size > 1:
        mids = (steps[1:] + steps[:-1]) / 2
        return np.concatenate([[steps[0] - (mids[0] - steps[0])], mids,
                               [steps[-1] + (steps[-1] - mids[-1])]])
    return np.array([steps[0] - 0.5, steps[0] + 0.5])


def _mesh(ax: plt.Axes, h: Heatmap, vmin: float, vmax: float):
    """The heat map's cells (rasterised in SVG/PDF: thousands of cells stay one image)."""
    return ax.pcolormesh(_cell_edges(h.steps), h.edges, h.share, cmap="viridis",
                         shading="flat", norm=PowerNorm(0.5, vmin=vmin, vmax=vmax),
                         rasterized=True)


def _cap_stairs(ax: plt.Axes, view: RunView, h: Heatmap, label: str | None = None) -> pd.Series:
    caps = view.table["max_len"].reindex(h.steps).ffill().bfill()
    if caps.notna().all():  # one flat segment across each step's cell
        ax.stairs(caps.to_numpy() + h.cap_offset, _cell_edges(h.steps), baseline=None,
                  color="red", lw=1.6, label=label)
    return caps.dropna()


def _share_bar(fig: plt.Figure, mesh, axes) -> None:
    cbar = fig.colorbar(mesh, ax=axes, pad=0.02, fraction=0.05)
    cbar.set_label("share of the step's completions\n(sqrt colour scale)")
    cbar.ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))


def heatmap_figure(view: RunView, w: int) -> plt.Figure:
    h = view.heatmap
    assert h is not None
    fig, ax = plt.subplots(figsize=(COLUMN, HEIGHT + 0.2))
    mesh = _mesh(ax, h, 0.0, max(float(h.share.max()), 1e-9))
    _share_bar(fig, mesh, ax)
    caps = _cap_stairs(ax, view, h, "cap in force (max_len)")
    mean = view.table["length/mean"].dropna()
    if len(mean):
        ax.plot(mean.index, smooth(mean, w).values, color="white", lw=1.0, ls="--",
                label=f"mean length ({_smooth_label(w)})")
    bin_w = h.edges[1] - h.edges[0]
    _title(ax, f"Response length distribution per step — {_who(view)}", 46)
    _step_axis(ax)
    ax.set_ylabel(f"response length\n(tokens, bins of {bin_w:.0f})")
    y = h.edges
    top = max(float(y[-1]), float(caps.max()) + h.cap_offset if len(caps) else 0.0)
    ax.set_ylim(y[0], top + 0.04 * top)  # headroom so the cap line is visible
    ax.set_facecolor("0.85")  # outside the bins: no data
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=1, facecolor="0.3",
              labelcolor="white", framealpha=1.0, edgecolor="0.3")
    return fig


def length_quantiles_figure(view: RunView, w: int) -> plt.Figure:
    t = view.table
    fig, ax = plt.subplots(figsize=ONE)
    if t[["length/p10", "length/p90"]].notna().all(axis=1).any():
        band = t[["length/p10", "length/p90"]].dropna()
        ax.fill_between(band.index, smooth(band["length/p10"], w), smooth(band["length/p90"], w),
                        color="tab:blue", alpha=0.18, lw=0, label="p10–p90")
    p50 = t["length/p50"].dropna()
    if len(p50):
        ax.plot(p50.index, smooth(p50, w).values, color="tab:blue", lw=1.0, ls="--",
                label="median (p50)")
    mean = t["length/mean"].dropna()
    if w > 1:
        ax.plot(mean.index, mean.values, color="tab:blue", alpha=RAW_ALPHA, lw=0.6,
                marker="o" if len(mean) <= 80 else None, ms=2)
    ax.plot(mean.index, smooth(mean, w).values, color="tab:blue", lw=1.5, label="mean",
            marker="o" if w <= 1 else None, ms=2.5)
    natural = t["val/length/mean"].dropna()
    if len(natural):
        ax.plot(natural.index, natural.values, color="tab:purple", lw=1.2, ls="--", marker="o",
                ms=2.5, label=NATURAL)
    caps = t["max_len"].dropna()
    if len(caps):
        ax.step(caps.index, caps.values, where="mid", color="tab:red", lw=1.2, ls=":",
                label="cap in force (max_len)")
    ax.set_ylim(bottom=0, top=max(float(caps.max()) if len(caps) else 0,
                                  float(t["length/p90"].max(skipna=True) or 0),
                                  float(natural.max()) if len(natural) else 0,
                                  float(mean.max()) if len(mean) else 1) * 1.08)
    _title(ax, f"Response length over training — {_who(view)}")
    _step_axis(ax)
    ax.set_ylabel("response length (tokens)")
    ax.grid(alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=handles + _style_handles(w), loc="upper center",
              bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    return fig


def km_figure(view: RunView) -> plt.Figure:
    km, advice = view.km, view.advice
    assert km is not None
    fig, ax = plt.subplots(figsize=ONE)
    x = np.concatenate([[0.0], km.times])
    s = np.concatenate([[1.0], km.probs])
    lo = np.concatenate([[1.0], np.nan_to_num(km.ci_low, nan=0.0)])
    hi = np.concatenate([[1.0], np.nan_to_num(km.ci_high, nan=1.0)])
    ax.fill_between(x, lo, hi, step="post", color="tab:blue", alpha=0.18, lw=0,
                    label="95% confidence band")
    ax.step(x, s, where="post", color="tab:blue", lw=1.5,
            label="Kaplan–Meier estimate (truncated = censored)")
    # The naive curve treats a truncated length as the true length.
    ax.step(np.concatenate([[0.0], km.naive_times]), np.concatenate([[1.0], km.naive_probs]),
            where="post", color="0.45", ls=":", lw=1.2,
            label="naive (a truncated length taken as the length)")
    ax.axhline(TARGET_TRUNCATION, color="0.3", lw=0.8, ls="--",
               label=f"{TARGET_TRUNCATION:.0%} truncated (target)")
    xmax = km.max_observed
    if advice is not None and advice.current_cap:
        ax.axvline(advice.current_cap, color="tab:red", lw=1.2, ls=":",
                   label=f"current cap ({advice.current_cap} tokens)")
    if advice is not None and advice.recommended_cap:
        ax.axvline(advice.recommended_cap, color="tab:green", lw=1.2,
                   label=f"recommended cap ({advice.recommended_cap} tokens)")
        xmax = max(xmax, advice.recommended_cap)
    right = xmax * 1.25 + 1
    if km.censored_at_max:
        ax.axvspan(km.max_observed, right, color="0.85", alpha=0.6, lw=0,
                   label="unknown: beyond the longest observation")
    ax.set_xlim(0, right)
    ax.set_ylim(0, 1.02)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    span = step_span(*km.steps)
    _title(ax, f"Length without the cap (Kaplan–Meier, {span}, n={km.n})\n{_who(view)}")
    ax.set_xlabel("response length x (tokens)")
    ax.set_ylabel("completions longer than x")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=1, frameon=False)
    return fig


def correct_incorrect_figure(report: Report) -> plt.Figure:
    fig, ax = plt.subplots(figsize=ONE)
    w = report.smoothing
    single = len(report.groups) == 1
    colors = _colors(len(report.groups))
    drawn = False
    extra: list = []
    for color, (group, views) in zip(colors, report.groups.items(), strict=True):
        name = views[0].run.label if len(views) == 1 else group
        c_ok, c_bad = ("tab:green", "tab:red") if single else (color, color)
        drawn |= _draw_group(ax, views, "length/correct_mean", c_ok,
                             "correct" if single else name, w)
        drawn |= _draw_group(ax, views, "length/incorrect_mean", c_bad,
                             "incorrect" if single else None, w, "--")
    if not single:
        extra = [Line2D([], [], color="0.3", lw=1.5, label="solid: correct"),
                 Line2D([], [], color="0.3", lw=1.5, ls="--", label="dashed: incorrect")]
    if not drawn:
        _no_data(ax, "no correctness recorded (the reward reports no `correct`/`accuracy`)")
    _title(ax, "Mean length of correct vs incorrect completions")
    _step_axis(ax)
    ax.set_ylabel("mean response length (tokens)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _legend(fig, [ax], report, extra)
    return fig


NATURAL = "natural length: val/ probe at a generous cap"


def length_overlay_figure(report: Report) -> plt.Figure:
    fig, ax = plt.subplots(figsize=ONE)
    has_val = any(v.table["val/length/mean"].notna().any() for v in report.views)
    _panel(ax, report, "length/mean", "mean response length (tokens)",
           "Mean response length per arm (dotted: the arm's cap"
           + ("; dashed: natural length)" if has_val else ")"))
    natural = False
    for color, views in zip(_colors(len(report.groups)), report.groups.values(), strict=True):
        caps = views[0].table["max_len"].dropna()
        if len(caps):
            ax.step(caps.index, caps.values, where="mid", color=color, lw=0.8, ls=":")
        # The probe is sparse (every val_every steps): drawn unsmoothed, with markers.
        natural |= _draw_group(ax, views, "val/length/mean", color, None, 1, "--")
    ax.set_ylim(bottom=0)
    fig.tight_layout()
    extra = [Line2D([], [], color="0.3", lw=1.5, ls="--", marker="o", ms=2.5, label=NATURAL)]
    _legend(fig, [ax], report, extra if natural else None)
    return fig


# --- comparisons and outcome analyses -----------------------------------------------------


def comparison_heatmaps(report: Report) -> tuple[list[tuple[RunView, Heatmap]], float, float]:
    """Each run's heat map on common bins (rollout runs) and the one colour scale of all."""
    tops = [float(v.run.rollouts.length.max()) for v in report.views
            if v.run.rollouts is not None and len(v.run.rollouts)]
    tops += [float(v.table["max_len"].max()) for v in report.views
             if v.table["max_len"].notna().any()]
    top = max(tops, default=1.0)
    maps = []
    for v in report.views:
        if v.run.rollouts is not None and len(v.run.rollouts):
            maps.append((v, outcomes.common_heatmap(v.run.rollouts, top)))
        elif v.heatmap is not None:  # logged histograms: their own bins
            maps.append((v, v.heatmap))
    vmin, vmax = outcomes.shared_color_limits([h for _, h in maps]) if maps else (0.0, 1.0)
    return maps, vmin, vmax


def heatmap_grid_figure(report: Report) -> plt.Figure:
    """One heat-map panel per run, same axes and one colour scale: shares compare."""
    maps, vmin, vmax = comparison_heatmaps(report)
    fig, axes = _grid(len(maps))
    caps = [float(v.table["max_len"].max()) for v, _ in maps if v.table["max_len"].notna().any()]
    (x0, x1), (y0, y1) = outcomes.shared_extent([h for _, h in maps], caps)
    mesh = None
    flat = list(axes.ravel())
    for ax, (view, h) in zip(flat, maps, strict=False):
        mesh = _mesh(ax, h, vmin, vmax)
        _cap_stairs(ax, view, h)
        ax.set_facecolor("0.85")
        _panel_title(ax, view)
    flat[0].set_xlim(x0, x1)
    flat[0].set_ylim(y0, y1)
    for ax in axes[-1]:
        _step_axis(ax)
    for ax in axes[:, 0]:
        ax.set_ylabel("response length (tokens)")
    fig.suptitle("Response length distribution per step, every arm on one scale "
                 "(red: cap in force)")
    assert mesh is not None
    _share_bar(fig, mesh, flat[: len(maps)])
    return fig


def accuracy_by_length_figure(report: Report) -> plt.Figure:
    """Accuracy per length bin, early vs late window, one panel per run (shared axes)."""
    data = [(v, outcomes.accuracy_by_length(v.run.rollouts, v.summary.window))
            for v in report.views if v.run.rollouts is not None]
    data = [(v, a) for v, a in data if a is not None]
    fig, axes = _grid(len(data), row_h=2.0)
    flat = list(axes.ravel())
    for ax, (view, a) in zip(flat, data, strict=False):
        centres = (a.edges[:-1] + a.edges[1:]) / 2
        for win, style, color in ((a.early, "--", "tab:orange"), (a.late, "-", "tab:blue")):
            lo, hi = win.wilson()
            ax.fill_between(centres, lo, hi, color=color, alpha=0.15, lw=0)
            ax.plot(centres, win.accuracy, ls=style, color=color, marker="o", ms=2.5)
        ax.set_ylim(-0.02, 1.02)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        ax.grid(alpha=0.3)
        if len(data) > 1:
            _panel_title(ax, view)
        else:
            _title(ax, f"Accuracy by response length — {_who(view)}")
    for ax in axes[-1]:
        ax.set_xlabel("response length (tokens, bin centre)")
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy (% correct in bin)")
    if len(data) > 1:
        fig.suptitle("Accuracy by response length, early vs late window")
    fig.legend(handles=[
        Line2D([], [], color="tab:orange", ls="--", marker="o", ms=2.5,
               label="early window"),
        Line2D([], [], color="tab:blue", marker="o", ms=2.5,
               label="late window"),
        Patch(color="0.5", alpha=0.3, label="95% interval")],
        loc="outside lower center", ncol=3, frameon=False)
    return fig


def outcomes_figure(view: RunView) -> plt.Figure:
    """Top: per-step heat maps of correct and incorrect completions (one colour scale; the
    two add up to the run's heat map). Bottom: early / late length histograms split into
    correct, incorrect (finished) and truncated completions (shared axes)."""
    r = view.run.rollouts
    assert r is not None
    maps = outcomes.outcome_heatmaps(r, view.table["max_len"].to_numpy(dtype=np.float64))
    a = outcomes.accuracy_by_length(r, view.summary.window)
    assert maps is not None and a is not None
    fig = plt.figure(figsize=(PAGE, 2 * HEIGHT + 0.6))
    grid = fig.add_gridspec(2, 2, hspace=0.55, wspace=0.12)
    top = [fig.add_subplot(grid[0, 0])]
    top.append(fig.add_subplot(grid[0, 1], sharex=top[0], sharey=top[0]))
    vmin, vmax = outcomes.shared_color_limits(maps)
    mesh = None
    for ax, h, name in zip(top, maps, ("correct", "incorrect"), strict=True):
        mesh = _mesh(ax, h, vmin, vmax)
        _cap_stairs(ax, view, h)
        ax.set_facecolor("0.85")
        _title(ax, f"{name} completions per step", 40)
        _step_axis(ax)
    (x0, x1), (y0, y1) = outcomes.shared_extent(
        list(maps), [float(view.table["max_len"].max())]
        if view.table["max_len"].notna().any() else [])
    top[0].set_xlim(x0, x1)
    top[0].set_ylim(y0, y1)
    top[0].set_ylabel("response length (tokens)")
    _share_bar(fig, mesh, top)
    bottom = [fig.add_subplot(grid[1, 0])]
    bottom.append(fig.add_subplot(grid[1, 1], sharex=bottom[0], sharey=bottom[0]))
    widths = np.diff(a.edges)
    for ax, win, name in zip(bottom, (a.early, a.late), ("early", "late"), strict=True):
        total = max(int((win.finished_correct + win.finished_incorrect + win.truncated).sum()), 1)
        base = np.zeros_like(widths)
        for part, color, label in ((win.finished_correct, "tab:green", "correct (finished)"),
                                   (win.finished_incorrect, "tab:red", "incorrect (finished)"),
                                   (win.truncated, "0.45", "truncated")):
            ax.bar(a.edges[:-1], part / total, widths, bottom=base, align="edge",
                   color=color, lw=0, label=label)
            base = base + part / total
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        ax.set_xlabel("response length (tokens)")
        ax.grid(alpha=0.3, axis="y")
        _title(ax, f"{name} window: {step_span(*win.steps)}", 40)
    bottom[0].set_ylabel("share of the window's\ncompletions")
    bottom[0].legend(loc="upper center", bbox_to_anchor=(1.05, -0.28), ncol=3, frameon=False)
    fig.suptitle(f"Length by outcome — {display_name(view.run)}")
    return fig


# --- which figures ------------------------------------------------------------------------


def _all_reward_is_accuracy(report: Report) -> bool:
    return all(outcomes.reward_is_accuracy(v.table) for v in report.views)


def _components(report: Report) -> list[str]:
    return list(dict.fromkeys(c for v in report.views for c in outcomes.reward_components(v.table)))


def _graded(view: RunView) -> bool:
    r = view.run.rollouts
    return r is not None and len(r) > 0 and bool(np.isfinite(r.correct).any())


def draw_all(report: Report, out: Path, formats: tuple[str, ...] = ("png",)) -> list[Figure]:
    """Write every figure the data allows into ``out``, in each of ``formats`` (plus PNG
    when neither PNG nor SVG is asked for: the HTML page embeds one of them); returns the
    figures in reading order, named by the file the page embeds."""
    with plt.rc_context(STYLE):
        return _draw_all(report, out, formats)


def _draw_all(report: Report, out: Path, formats: tuple[str, ...]) -> list[Figure]:
    figs: list[Figure] = []
    w = report.smoothing
    multi = len(report.views) > 1
    shown = page_format(formats)
    written = tuple(dict.fromkeys((shown, *formats)))

    def add(stem: str, title: str, caption: str, draw: Callable[[], plt.Figure],
            run_id: str | None = None) -> None:
        save(draw(), out / stem, written)
        others = [f"{stem}.{f}" for f in written if f != shown]
        if others:
            caption += f" Also as {', '.join(others)}."
        figs.append(Figure(f"{stem}.{shown}", title, caption, run_id))

    def per_run(view: RunView, i: int, parts: tuple[str, ...]) -> None:
        stem, rid = f"run{i:02d}", view.run.run_id
        if "length" in parts:
            add(f"{stem}_length", f"Length over training — {display_name(view.run)}",
                "Mean, median and p10–p90 band of response length per step, with the cap.",
                lambda: length_quantiles_figure(view, w), rid)
        if "heatmap" in parts and view.heatmap is not None:
            add(f"{stem}_heatmap", f"Length heat map — {display_name(view.run)}",
                f"Share of completions per length bin and step (from {view.heatmap.source}); "
                "the red line is the cap in force. The colour scale is this run's own.",
                lambda: heatmap_figure(view, w), rid)
        if "outcomes" in parts and _graded(view):
            add(f"{stem}_outcomes", f"Length by outcome — {display_name(view.run)}",
                "Top: share of each step's completions per length bin, correct (left) and "
                "incorrect (right), on one colour scale; the two add up to the heat map. "
                "Bottom: length histograms of the early and late windows split into correct "
                "and incorrect finished completions and truncated ones (share of the "
                "window's completions, same axes).",
                lambda: outcomes_figure(view), rid)
        if "km" in parts and view.km is not None:
            add(f"{stem}_km", f"Length without the cap — {display_name(view.run)}",
                f"Kaplan–Meier survival of response length on the last {report.window.label}, "
                "truncated completions treated as right-censored.",
                lambda: km_figure(view), rid)

    if multi:
        add("length_mean", "Mean length per arm",
            "Mean response length per step for each arm; dotted lines are the caps"
            + (", dashed lines the natural length (the val/ probe: fixed prompts at a generous "
               "cap)." if any(v.table["val/length/mean"].notna().any() for v in report.views)
               else " (no natural-length probe: trainer.val_every=0)."),
            lambda: length_overlay_figure(report))
        if any(v.heatmap is not None for v in report.views):
            add("length_heatmaps", "Length heat maps, all arms on one scale",
                "One panel per run: share of each step's completions per length bin, with the "
                "same steps, length bins and colour scale in every panel (the per-run heat "
                "maps below each use their own scale).",
                lambda: heatmap_grid_figure(report))
    else:  # one run: its length curves lead
        per_run(report.views[0], 0, ("length", "heatmap"))
    add("clip_ratio", "Clip ratio", "Share of each step's completions stopped by the cap.",
        lambda: _panels_figure(report, "Truncated completions (clip ratio) per step", [
            Panel("length/clip_ratio", "truncated completions (% of step)", "clip ratio",
                  "no clip ratio recorded", percent=True)]))
    if _all_reward_is_accuracy(report):
        add("reward_accuracy", "Reward = accuracy",
            "Binary reward: the mean reward equals the accuracy (mean of `correct`) at every "
            "step, so one panel shows both.",
            lambda: _panels_figure(report, "Reward = accuracy per step (binary reward)", [
                Panel("accuracy", "mean reward = accuracy (% correct)", "reward = accuracy",
                      "no correctness recorded", percent=True)]))
    else:
        add("reward_accuracy", "Reward and accuracy",
            "Mean reward per step (left) and accuracy = mean of `correct` where known (right).",
            lambda: _panels_figure(report, "Reward and accuracy per step", [
                Panel("reward/mean", "mean reward (reward units)", "reward", "no reward"),
                Panel("accuracy", "accuracy (% correct)", "accuracy",
                      "no correctness recorded", percent=True)]))
    components = _components(report)
    has_entropy = any(v.table.get("policy/entropy", pd.Series(dtype=float)).notna().any()
                      for v in report.views)
    if components or has_entropy:
        panels = [Panel(c, "mean per completion (reward units)",
                        f"reward component `{c.removeprefix('reward/').removesuffix('_mean')}`",
                        "not recorded for this run") for c in components[:5]]
        if has_entropy:
            panels.append(Panel("policy/entropy", "policy entropy (nats per token)",
                                "policy entropy", "no entropy recorded"))
        add("components_entropy", "Reward components and entropy",
            "Mean of each reward component (`reward/<name>_mean`: the reward function's "
            "parts and the length terms) and the policy's mean per-token entropy, per step.",
            lambda: _panels_figure(report, "Reward components and policy entropy per step",
                                   panels))
    add("correlation", "Reward–length correlation",
        "Spearman correlation of reward and length over the whole batch (left) and the mean "
        "over prompt groups (right); below 0: longer completions earn less.",
        lambda: _panels_figure(report, "Reward–length correlation per step", [
            Panel("corr/reward_length_spearman", "Spearman ρ (reward, length)", "whole batch",
                  "no batch correlation recorded", zero_line=True),
            Panel("corr/within_group_spearman", "mean Spearman ρ within groups",
                  "within prompt groups", "no within-group correlation recorded",
                  zero_line=True)]))
    add("correct_incorrect", "Correct vs incorrect length",
        "Mean length of correct and incorrect completions per step.",
        lambda: correct_incorrect_figure(report))
    if any(_graded(v) for v in report.views):
        add("accuracy_by_length", "Accuracy by length",
            "Share of correct completions per length bin in the early and the late window "
            f"(the summary's windows), bands: 95% Wilson intervals; bins with fewer than "
            f"{outcomes.MIN_BIN_ROWS} graded completions are left out. Truncated completions "
            "sit in the bin of the cap.",
            lambda: accuracy_by_length_figure(report))
    for i, view in enumerate(report.views):
        per_run(view, i, ("outcomes", "km") if not multi
                else ("length", "heatmap", "outcomes", "km"))
    return figs
