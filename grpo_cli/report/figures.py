"""Figures (PNG, SVG and/or PDF), each readable on its own: title, axis labels with units,
legend; drawn in the paper style of :mod:`grpo_cli.report.style` (column widths, 8-9 pt text).

Per-step values are noisy (the batch's prompt mix), so each curve is drawn as faint raw
points plus a centred rolling mean whose window is stated in the legend. Several runs get one
colour per arm; arms with several seeds are drawn as the mean over seeds with a min-max band.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Sequence
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
from grpo_cli.report.aggregate import Heatmap, length_bins  # noqa: E402
from grpo_cli.report.censoring import TARGET_TRUNCATION  # noqa: E402
from grpo_cli.report.load import Rollouts, display_name  # noqa: E402
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
TITLE_LINES = 2  # a title never takes more: the plot, not its title, fills the figure
# One colour per role, the same in every figure: a reader learns them once.
MEAN_COLOR = "tab:blue"  # the training batch's length
NATURAL_COLOR = "tab:purple"  # the natural length (the val/ probe at a generous cap)
CAP_COLOR = "tab:red"  # the cap in force (max_len)
ABOVE_CAP = "0.85"  # heat maps: lengths above the cap, which no completion can reach
OWN_Y_RATIO = 2.0  # arms' caps further apart than this: each arm's panel gets its own y range
SMALL = 6.5  # pt: legends that must not crowd a one-column figure
# Outcome classes of the outcome figure, as its histograms split them (name, colour).
OUTCOMES = (("correct, finished", "tab:green"), ("incorrect, finished", "tab:red"),
            ("truncated", "0.45"))


def smoothing_window(n_steps: int) -> int:
    """About 5% of the run, odd (1 = no smoothing for short runs, at most 201 steps)."""
    w = max(1, min(200, round(n_steps / 20)))
    return w + 1 if w > 1 and w % 2 == 0 else w  # odd: the centred window is symmetric


def smooth(y: pd.Series, w: int) -> pd.Series:
    return y.rolling(w, center=True, min_periods=1).mean() if w > 1 else y


def _colors(n: int) -> list:
    cmap = plt.get_cmap("tab10" if n <= 10 else "viridis")
    return [cmap(i if n <= 10 else i / max(n - 1, 1)) for i in range(n)]


def wrap_title(text: str, chars: int, lines: int = TITLE_LINES) -> str:
    """``text`` wrapped at ``chars`` characters a line, at most ``lines`` lines: the rest is
    cut with an ellipsis (a four-line title squeezes the plot it names)."""
    out = [w for line in text.split("\n") for w in textwrap.wrap(line, chars) or [""]]
    if len(out) > lines:
        last = " ".join(out[lines - 1:])
        out = [*out[:lines - 1], last[:chars - 1].rstrip() + "…"]
    return "\n".join(out)


def _title(ax: plt.Axes, text: str, chars: int = 52, size: float | None = None) -> None:
    """A title wrapped to the axes' width (about ``chars`` characters a line at 9 pt)."""
    ax.set_title(wrap_title(text, chars), fontsize=size)


def _panel_title(ax: plt.Axes, view: RunView) -> None:
    """A grid panel's title: the run's label, 8 pt, wrapped to a third of the page."""
    _title(ax, _who(view), 30, 8.0)


def _arm_title(group: str, views: list[RunView]) -> str:
    """An arm's panel title: its label (``max_len=32``) and how many seeds it pools."""
    if len(views) == 1:
        return _who(views[0])
    return f"{group} ({len(views)} seeds)"


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
    """What figure titles call a run: its label (the config keys that set it apart, e.g.
    ``max_len=32 seed=1``, or its name). The id only when nothing else names the run: the
    page's heading and caption carry the id, a title that does wraps onto four lines."""
    return view.run.label or view.run.run_id


def _titled(text: str, view: RunView) -> str:
    return f"{text} — {_who(view)}"


def _step_axis(ax: plt.Axes) -> None:
    ax.set_xlabel("training step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers


def _no_data(ax: plt.Axes, why: str) -> None:
    ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, color="0.4",
            wrap=True)


# --- series drawing -----------------------------------------------------------------------


def _draw_group(ax: plt.Axes, views: list[RunView], col: str, color, label: str | None,
                w: int, linestyle: str = "-", *, lw: float = 2.0, marker: str = "o",
                zorder: float = 2.0) -> bool:
    """One arm: raw + smoothed for a single run; mean over seeds with a min-max band.
    ``zorder`` orders one arm's lines (the training line above its sparse probe)."""
    series = [v.table[col].dropna() for v in views if col in v.table]  # arms may differ
    series = [s for s in series if len(s)]
    if not series:
        return False
    if len(series) == 1:
        s = series[0]
        if w > 1:
            ax.plot(s.index, s.values, color=color, alpha=RAW_ALPHA, lw=0.8, ls=linestyle,
                    marker=marker if len(s) <= 80 else None, ms=2.5, zorder=zorder)
        ax.plot(s.index, smooth(s, w).values, color=color, lw=lw, ls=linestyle, label=label,
                marker=marker if w <= 1 else None, ms=3, zorder=zorder)
        return True
    frame = pd.concat([smooth(s, w) for s in series], axis=1)
    mean = frame.mean(axis=1)
    ax.fill_between(frame.index, frame.min(axis=1), frame.max(axis=1), color=color,
                    alpha=0.2, lw=0, zorder=zorder - 0.5)
    ax.plot(mean.index, mean.values, color=color, lw=lw, ls=linestyle, zorder=zorder,
            marker=marker if w <= 1 else None, ms=3,
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


def _caps(view: RunView, h: Heatmap) -> pd.Series:
    """The cap in force at each of the heat map's steps (NaN throughout when unknown)."""
    return view.table["max_len"].reindex(h.steps).ffill().bfill()


def length_top(view: RunView, h: Heatmap) -> float:
    """Top of the run's own length range on its heat map: the top of the highest cap's bin
    or of the longest completion's bin, whichever is higher (not the other arms' range)."""
    filled = np.flatnonzero(np.nansum(h.share, axis=1) > 0)
    top = float(h.edges[filled[-1] + 1]) if filled.size else float(h.edges[-1])
    caps = _caps(view, h)
    return max(top, float(caps.max()) + h.cap_offset) if caps.notna().any() else top


def _cap_and_above(ax: plt.Axes, view: RunView, h: Heatmap, top: float) -> None:
    """The cap in force (red stairs) and the band above it up to ``top``, grey: no completion
    can be longer than the cap, so that band is empty by construction, not by chance."""
    caps = _caps(view, h)
    if not caps.notna().all():
        return
    edges, cap_top = _cell_edges(h.steps), caps.to_numpy() + h.cap_offset
    ax.stairs(np.full(cap_top.shape, top), edges, baseline=cap_top, fill=True,
              color=ABOVE_CAP, lw=0, zorder=1.5)
    ax.stairs(cap_top, edges, baseline=None, color=CAP_COLOR, lw=1.6, zorder=2.5)


def _length_ylim(ax: plt.Axes, h: Heatmap, top: float, capped: bool) -> float:
    """y from the first bin to ``top`` (+4% headroom where a cap is drawn, so its line and
    the band above it show); returns the upper limit."""
    upper = top * 1.04 if capped else top
    ax.set_ylim(float(h.edges[0]), upper)
    return upper


def _cap_handles(light_text: bool = False) -> list:
    """Legend entries of the cap line and the band above it."""
    return [Line2D([], [], color=CAP_COLOR, lw=1.6, label="cap in force (max_len)"),
            Patch(facecolor=ABOVE_CAP, edgecolor="0.6" if light_text else "none", lw=0.5,
                  label="above the cap: no completion can be longer")]


def _heatmap_panel(ax: plt.Axes, view: RunView, h: Heatmap, vmin: float, vmax: float,
                   top: float):
    """One heat-map panel on ``[first bin, top]``: cells, cap, band above the cap."""
    mesh = _mesh(ax, h, vmin, vmax)
    upper = _length_ylim(ax, h, top, _caps(view, h).notna().all())
    _cap_and_above(ax, view, h, upper)
    return mesh


def _share_bar(fig: plt.Figure, mesh, axes) -> None:
    cbar = fig.colorbar(mesh, ax=axes, pad=0.02, fraction=0.05)
    cbar.set_label("share of the step's completions\n(sqrt colour scale)")
    cbar.ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))


def heatmap_figure(view: RunView, w: int) -> plt.Figure:
    h = view.heatmap
    assert h is not None
    fig, ax = plt.subplots(figsize=(COLUMN, HEIGHT + 0.2))
    mesh = _heatmap_panel(ax, view, h, 0.0, max(float(h.share.max()), 1e-9),
                          length_top(view, h))
    _share_bar(fig, mesh, ax)
    handles = _cap_handles(light_text=True) if _caps(view, h).notna().all() else []
    mean = view.table["length/mean"].dropna()
    if len(mean):
        handles += ax.plot(mean.index, smooth(mean, w).values, color="white", lw=1.0, ls="--",
                           label=f"mean length ({_smooth_label(w)})", zorder=3)
    bin_w = h.edges[1] - h.edges[0]
    _title(ax, _titled("Response length per step", view), 46)
    _step_axis(ax)
    ax.set_ylabel(f"response length\n(tokens, bins of {bin_w:.0f})")
    if handles:  # dark: the white mean line shows
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=1,
                  facecolor="0.3", labelcolor="white", framealpha=1.0, edgecolor="0.3")
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
    _title(ax, _titled("Response length over training", view))
    _step_axis(ax)
    ax.set_ylabel("response length (tokens)")
    ax.grid(alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=handles + _style_handles(w), loc="upper center",
              bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    return fig


def _ref_label(ax: plt.Axes, x: float | None, y: float | None, text: str, color) -> None:
    """A reference line's name written beside it (not one more legend row): a vertical line
    at ``x`` named at its top, a horizontal one at ``y`` at its left end (where a survival
    curve is high, so the name stays clear of it)."""
    if x is not None:
        ax.text(x, 0.98, f" {text}", transform=ax.get_xaxis_transform(), rotation=90,
                ha="left", va="top", fontsize=SMALL, color=color)
    elif y is not None:
        ax.text(0.01, y, text, transform=ax.get_yaxis_transform(), ha="left", va="bottom",
                fontsize=SMALL, color=color)


def km_figure(view: RunView) -> plt.Figure:
    """Kaplan–Meier survival of length (truncated = censored) against the naive curve; the
    naive curve is drawn last, black and dashed: where the two part is what the cap hides."""
    km, advice = view.km, view.advice
    assert km is not None
    fig, ax = plt.subplots(figsize=ONE)
    x = np.concatenate([[0.0], km.times])
    s = np.concatenate([[1.0], km.probs])
    lo = np.concatenate([[1.0], np.nan_to_num(km.ci_low, nan=0.0)])
    hi = np.concatenate([[1.0], np.nan_to_num(km.ci_high, nan=1.0)])
    ax.fill_between(x, lo, hi, step="post", color=MEAN_COLOR, alpha=0.18, lw=0,
                    label="95% confidence band")
    ax.step(x, s, where="post", color=MEAN_COLOR, lw=1.8, zorder=3,
            label="Kaplan–Meier (truncated = censored)")
    # The naive curve treats a truncated length as the true length.
    ax.step(np.concatenate([[0.0], km.naive_times]), np.concatenate([[1.0], km.naive_probs]),
            where="post", color="black", ls=(0, (3, 1.5)), lw=1.1, zorder=4,
            label="naive (truncated length taken as final)")
    ax.axhline(TARGET_TRUNCATION, color="0.3", lw=0.8, ls="--")
    _ref_label(ax, None, TARGET_TRUNCATION, f"{TARGET_TRUNCATION:.0%} truncated (target)",
               "0.3")
    xmax = km.max_observed
    if advice is not None and advice.current_cap:
        ax.axvline(advice.current_cap, color=CAP_COLOR, lw=1.2, ls=":")
        _ref_label(ax, advice.current_cap, None, f"cap {advice.current_cap}", CAP_COLOR)
    if advice is not None and advice.recommended_cap:
        ax.axvline(advice.recommended_cap, color="tab:green", lw=1.2)
        _ref_label(ax, advice.recommended_cap, None, f"recommended {advice.recommended_cap}",
                   "tab:green")
        xmax = max(xmax, advice.recommended_cap)
    right = xmax * 1.25 + 1
    if km.censored_at_max:
        ax.axvspan(km.max_observed, right, color="0.85", alpha=0.6, lw=0,
                   label="unknown: past the longest length seen")
    ax.set_xlim(0, right)
    ax.set_ylim(0, 1.02)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    # the run on one line (cut if need be), the estimate's window on the second
    ax.set_title(f"{wrap_title(f'{_who(view)}: length without the cap', 52, 1)}\n"
                 f"Kaplan–Meier, {step_span(*km.steps)}, n={km.n}")
    ax.set_xlabel("response length x (tokens)")
    ax.set_ylabel("completions longer than x")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False,
              fontsize=SMALL, handlelength=1.6, columnspacing=0.8)
    return fig


@dataclass
class Pair:
    """Two per-step columns drawn against each other in one panel, per arm (solid vs
    dashed; green vs red when there is one arm)."""

    solid: str  # column, e.g. length/correct_mean
    dashed: str
    names: tuple[str, str]  # what each line is, e.g. ("correct", "incorrect")
    title: str
    ylabel: str  # with units
    empty: str  # said in the panel when no run has either column


def _pair_panel(ax: plt.Axes, report: Report, pair: Pair) -> list:
    """Draw ``pair`` for every arm; returns the legend entries a several-arm panel needs
    (which line style is which)."""
    w = report.smoothing
    single = len(report.groups) == 1
    drawn = False
    for color, (group, views) in zip(_colors(len(report.groups)), report.groups.items(),
                                     strict=True):
        name = views[0].run.label if len(views) == 1 else group
        c_solid, c_dashed = ("tab:green", "tab:red") if single else (color, color)
        drawn |= _draw_group(ax, views, pair.solid, c_solid,
                             pair.names[0] if single else name, w)
        drawn |= _draw_group(ax, views, pair.dashed, c_dashed,
                             pair.names[1] if single else None, w, "--")
    if not drawn:
        _no_data(ax, pair.empty)
    _title(ax, pair.title, chars=40)
    _step_axis(ax)
    ax.set_ylabel(pair.ylabel)
    ax.grid(alpha=0.3)
    if single:
        return []
    return [Line2D([], [], color="0.3", lw=1.5, label=f"solid: {pair.names[0]}"),
            Line2D([], [], color="0.3", lw=1.5, ls="--", label=f"dashed: {pair.names[1]}")]


def correct_incorrect_figure(report: Report) -> plt.Figure:
    fig, ax = plt.subplots(figsize=ONE)
    extra = _pair_panel(ax, report, Pair(
        "length/correct_mean", "length/incorrect_mean", ("correct", "incorrect"),
        "Mean length of correct vs incorrect completions", "mean response length (tokens)",
        "no correctness recorded (the reward reports no `correct`/`accuracy`)"))
    fig.tight_layout()
    _legend(fig, [ax], report, extra)
    return fig


ENTROPY_PAIRS = (
    Pair("entropy/finished_mean", "entropy/truncated_mean", ("finished", "truncated"),
         "finished vs truncated", "mean token entropy (nats)", "no entropy columns recorded"),
    Pair("entropy/correct_mean", "entropy/incorrect_mean", ("correct", "incorrect"),
         "correct vs incorrect", "mean token entropy (nats)", "no correctness recorded"),
    Pair("entropy/first_quarter_mean", "entropy/last_quarter_mean",
         ("first quarter of tokens", "last quarter of tokens"), "along the response",
         "mean token entropy (nats)", "no entropy columns recorded"),
)


def entropy_figure(report: Report) -> plt.Figure:
    """Entropy by outcome and by position: where the policy stops exploring first."""
    fig, axes = plt.subplots(1, 3, figsize=(PAGE, HEIGHT * 1.1))
    extra: list = []
    for ax, pair in zip(axes, ENTROPY_PAIRS, strict=True):
        for handle in _pair_panel(ax, report, pair):
            if handle.get_label() not in [h.get_label() for h in extra]:
                extra.append(handle)
    fig.suptitle("Policy entropy by outcome and position, per step")
    fig.tight_layout()
    _legend(fig, list(axes), report, extra)
    return fig


NATURAL = "natural length: val/ probe at a generous cap"


def _arm_cap(views: list[RunView]) -> float:
    """The largest cap any of the arm's runs had in force (NaN when none is known)."""
    caps = [float(v.table["max_len"].max()) for v in views if v.table["max_len"].notna().any()]
    return max(caps, default=math.nan)


def caps_differ(report: Report) -> bool:
    """The arms' caps are more than OWN_Y_RATIO apart: on one y axis the small-cap arm would
    be squashed into the bottom of its panel."""
    caps = [c for c in (_arm_cap(vs) for vs in report.groups.values()) if math.isfinite(c)]
    return len(caps) > 1 and max(caps) > OWN_Y_RATIO * min(caps)


def _arm_length_top(views: list[RunView]) -> float:
    """The arm's highest cap, training mean or natural length: its panel's y range."""
    cols = ("max_len", "length/mean", "val/length/mean")
    tops = [float(v.table[c].max()) for v in views for c in cols if v.table[c].notna().any()]
    return max(tops, default=1.0)


def _length_arm_panel(ax: plt.Axes, views: list[RunView], w: int) -> bool:
    """One arm: the training mean (solid, on top), the natural length (thin, dashed, open
    markers, beneath it) and the cap (red, dotted); returns whether the probe was drawn."""
    caps = views[0].table["max_len"].dropna()  # an arm's seeds share their cap schedule
    if len(caps):
        ax.step(caps.index, caps.values, where="mid", color=CAP_COLOR, lw=1.0, ls=":",
                zorder=1.5)
    _draw_group(ax, views, "length/mean", MEAN_COLOR, None, w, zorder=3)
    # The probe is sparse (every val_every steps): drawn unsmoothed, with markers.
    natural = _draw_group(ax, views, "val/length/mean", NATURAL_COLOR, None, 1, "--", lw=1.0,
                          marker="s", zorder=2)
    if natural:
        ax.lines[-1].set_markerfacecolor("white")  # open markers: the training line shows
    ax.grid(alpha=0.3)
    return natural


def _length_handles(report: Report, natural: bool) -> list:
    w = report.smoothing
    raw, seeds = _kinds(report)
    out = [Line2D([], [], color=MEAN_COLOR, lw=2,
                  label=f"mean length of the training batch ({_smooth_label(w)})")]
    if w > 1 and raw:
        out.append(Line2D([], [], color=MEAN_COLOR, lw=0.8, alpha=RAW_ALPHA * 2, marker="o",
                          ms=2.5, label="raw per step"))
    if natural:
        out.append(Line2D([], [], color=NATURAL_COLOR, lw=1.0, ls="--", marker="s", ms=3,
                          mfc="white", label=NATURAL))
    out.append(Line2D([], [], color=CAP_COLOR, lw=1.0, ls=":", label="cap in force (max_len)"))
    if seeds:
        out.append(Patch(color=MEAN_COLOR, alpha=0.2, label="band: min–max over seeds"))
    return out


def length_overlay_figure(report: Report) -> plt.Figure:
    """Mean length, one panel per arm (arm = runs differing only in seed). The y axis is
    shared unless the caps differ by more than OWN_Y_RATIO; the legend sits below the grid."""
    groups = list(report.groups.items())
    own_y = caps_differ(report)
    fig, axes = _grid(len(groups), sharey=not own_y)
    flat = list(axes.ravel())
    natural = False
    for ax, (group, views) in zip(flat, groups, strict=False):
        natural |= _length_arm_panel(ax, views, report.smoothing)
        _title(ax, _arm_title(group, views), 30, 8.0)
        ax.set_ylim(0, _arm_length_top(views) * 1.08)
    if not own_y:  # shared: the highest arm sets the range
        flat[0].set_ylim(0, max(_arm_length_top(vs) for _, vs in groups) * 1.08)
    for ax in axes[-1]:
        _step_axis(ax)
    for ax in axes[:, 0]:
        ax.set_ylabel("mean response length\n(tokens)")
    fig.suptitle("Mean response length per arm"
                 + (" (each panel its own length scale)" if own_y else ""))
    fig.legend(handles=_length_handles(report, natural), loc="outside lower center", ncol=2,
               frameon=False)
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
    """One heat-map panel per run on common bins and one colour scale (shares compare); each
    panel's y axis spans that run's own lengths (up to its cap), not the longest arm's."""
    maps, vmin, vmax = comparison_heatmaps(report)
    fig, axes = _grid(len(maps), sharey=False)
    mesh = None
    flat = list(axes.ravel())
    for ax, (view, h) in zip(flat, maps, strict=False):
        mesh = _heatmap_panel(ax, view, h, vmin, vmax, length_top(view, h))
        _panel_title(ax, view)
    x0, x1 = outcomes.shared_extent([h for _, h in maps])[0]
    flat[0].set_xlim(x0, x1)
    for ax in axes[-1]:
        _step_axis(ax)
    for ax in axes[:, 0]:
        ax.set_ylabel("response length (tokens)")
    fig.suptitle("Response length per step, all arms on one colour scale")
    assert mesh is not None
    _share_bar(fig, mesh, flat[: len(maps)])
    if any(_caps(v, h).notna().all() for v, h in maps):
        fig.legend(handles=_cap_handles(), loc="outside lower center", ncol=2, frameon=False)
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


def outcome_class_heatmaps(r: Rollouts, caps: np.ndarray | None = None) -> list[Heatmap] | None:
    """Per-step length heat maps of the OUTCOMES classes, as the histograms below them split
    the completions: finished and correct, finished and incorrect, truncated (whatever the
    grade: cut off, its answer is not the model's). Each cell is a share of ALL the step's
    completions, so the three add up to the step's heat map less its finished ungraded rows.
    Bins as :func:`aggregate.rollout_heatmap`; None without graded rows."""
    if not len(r) or not np.isfinite(r.correct).any():
        return None
    steps, inv, b, edges = length_bins(r, caps)
    bins = len(edges) - 1
    cell = inv * bins + b
    total = np.maximum(np.bincount(inv, minlength=steps.shape[0]), 1).astype(np.float64)
    known, done = np.isfinite(r.correct), ~r.truncated
    right = known & (r.correct >= 0.5)
    out = []
    for m in (right & done, known & ~right & done, r.truncated):
        counts = np.bincount(cell[m], minlength=steps.shape[0] * bins)
        out.append(Heatmap(steps, edges, counts.reshape(steps.shape[0], bins).T / total,
                           "rollouts", 0.5))
    return out


def _row_major(handles: list, ncol: int) -> list:
    """``handles`` reordered so a legend (which fills column by column) reads row by row."""
    rows = math.ceil(len(handles) / ncol)
    return [handles[r * ncol + c] for c in range(ncol) for r in range(rows)
            if r * ncol + c < len(handles)]


def _outcome_heatmap_row(fig: plt.Figure, axes: Sequence[plt.Axes], view: RunView,
                         maps: list[Heatmap]) -> None:
    """The top row: one heat map per outcome class, one colour scale and one y range."""
    vmin, vmax = outcomes.shared_color_limits(maps)
    top = max(length_top(view, h) for h in maps)
    mesh = None
    for ax, h, (name, color) in zip(axes, maps, OUTCOMES, strict=True):
        mesh = _heatmap_panel(ax, view, h, vmin, vmax, top)
        ax.set_title(f"{name}, per step", color=color, fontsize=8.5)  # its histogram colour
        _step_axis(ax)
        ax.xaxis.set_major_locator(MaxNLocator(5, integer=True))  # a third of the page
    for ax in axes[1:]:
        ax.tick_params(labelleft=False)  # one shared length axis, labelled once
    axes[0].set_xlim(*outcomes.shared_extent(maps)[0])
    axes[0].set_ylabel("response length (tokens)")
    _share_bar(fig, mesh, list(axes))


def _outcome_histogram(ax: plt.Axes, edges: np.ndarray, win: outcomes.WindowBins,
                       name: str) -> None:
    """One window's length histogram, stacked by outcome class (share of its completions)."""
    widths = np.diff(edges)
    parts = (win.finished_correct, win.finished_incorrect, win.truncated)
    total = max(int(sum(p.sum() for p in parts)), 1)
    base = np.zeros_like(widths)
    for part, (label, color) in zip(parts, OUTCOMES, strict=True):
        ax.bar(edges[:-1], part / total, widths, bottom=base, align="edge", color=color, lw=0,
               label=label)
        base = base + part / total
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set_xlabel("response length (tokens)")
    ax.grid(alpha=0.3, axis="y")
    _title(ax, f"{name} window: {step_span(*win.steps)}", 40)


def outcomes_figure(view: RunView) -> plt.Figure:
    """Top: per-step heat maps of the three outcome classes (correct and incorrect finished
    completions, truncated ones; one colour scale). Bottom: early / late length histograms
    split into the same classes, same colours (shared axes)."""
    r = view.run.rollouts
    assert r is not None
    maps = outcome_class_heatmaps(r, view.table["max_len"].to_numpy(dtype=np.float64))
    a = outcomes.accuracy_by_length(r, view.summary.window)
    assert maps is not None and a is not None
    fig = plt.figure(figsize=(PAGE, 2 * HEIGHT + 0.7))
    grid = fig.add_gridspec(2, 6, hspace=0.5, wspace=0.5)
    top = [fig.add_subplot(grid[0, 0:2])]
    top += [fig.add_subplot(grid[0, i:i + 2], sharex=top[0], sharey=top[0]) for i in (2, 4)]
    _outcome_heatmap_row(fig, top, view, maps)
    bottom = [fig.add_subplot(grid[1, 0:3])]
    bottom.append(fig.add_subplot(grid[1, 3:6], sharex=bottom[0], sharey=bottom[0]))
    for ax, win, name in zip(bottom, (a.early, a.late), ("early", "late"), strict=True):
        _outcome_histogram(ax, a.edges, win, name)
    bottom[0].set_ylabel("share of the window's\ncompletions")
    handles = bottom[0].get_legend_handles_labels()[0]
    if _caps(view, maps[0]).notna().all():
        handles += _cap_handles()
    fig.legend(handles=_row_major(handles, 3), loc="upper center", bbox_to_anchor=(0.5, 0.02),
               ncol=3, frameon=False)
    fig.suptitle(_titled("Length by outcome", view))
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
                "the red line is the cap in force, grey above it lengths no completion can "
                "reach. The colour scale is this run's own.",
                lambda: heatmap_figure(view, w), rid)
        if "outcomes" in parts and _graded(view):
            add(f"{stem}_outcomes", f"Length by outcome — {display_name(view.run)}",
                "Top: share of each step's completions per length bin for the three "
                "outcomes: correct and incorrect finished completions and truncated ones "
                "(whatever their grade), on one colour scale; together they make the heat "
                "map. Bottom: length histograms of the early and late windows split into the "
                "same three outcomes (share of the window's completions, same axes). Grey "
                "above the red cap line: lengths no completion can reach.",
                lambda: outcomes_figure(view), rid)
        if "km" in parts and view.km is not None:
            add(f"{stem}_km", f"Length without the cap — {display_name(view.run)}",
                f"Kaplan–Meier survival of response length on the last {report.window.label}, "
                "truncated completions treated as right-censored.",
                lambda: km_figure(view), rid)

    if multi:
        add("length_mean", "Mean length per arm",
            "Mean response length per step, one panel per arm (blue: the training batch; "
            "red dotted: the cap"
            + ("; purple dashed: the natural length, i.e. the val/ probe: fixed prompts at a "
               "generous cap)." if any(v.table["val/length/mean"].notna().any()
                                       for v in report.views)
               else "; no natural-length probe: trainer.val_every=0).")
            + (" The arms' caps differ a lot, so each panel has its own length scale."
               if caps_differ(report) else " All panels share one length scale."),
            lambda: length_overlay_figure(report))
        if any(v.heatmap is not None for v in report.views):
            add("length_heatmaps", "Length heat maps, all arms on one scale",
                "One panel per run: share of each step's completions per length bin, with the "
                "same steps, length bins and colour scale in every panel; each panel's length "
                "axis spans its own run (up to its cap), grey above the red cap line: lengths "
                "no completion can reach (the per-run heat maps below each use their own "
                "colour scale).",
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
    if any(v.table["length/between_prompt_frac"].notna().any() for v in report.views):
        add("length_variance", "Where length variance lives",
            "Share of each step's length variance that lies between prompts (left; the rest "
            "lies within prompt groups), and the spread within groups (right: root mean "
            "squared deviation from the group's mean length). A falling share: the policy "
            "stopped adapting length to the problem; the within-group spread is what GRPO's "
            "group-relative signal about length feeds on.",
            lambda: _panels_figure(report, "Where length variance lives, per step", [
                Panel("length/between_prompt_frac", "between prompts (% of length variance)",
                      "between prompts", "not recorded", percent=True),
                Panel("length/within_group_std", "within-group spread (tokens)",
                      "within prompt groups", "not recorded")]))
    if any(v.table["entropy/first_quarter_mean"].notna().any() for v in report.views):
        add("entropy", "Entropy by outcome and position",
            "Each completion's mean token entropy (at the rollout temperature), averaged per "
            "step over the update's completions: those that finished vs those the cap cut "
            "(left), correct vs incorrect (middle), and over each completion's first vs last "
            "quarter of tokens (right). A collapse shows as entropy falling at the end of "
            "long answers first.",
            lambda: entropy_figure(report))
    if any(v.table["perf/rollout_tail_frac"].notna().any() for v in report.views):
        add("rollout_tail", "The rollout's long tail",
            "Share of each step's sampling time spent after 90% of its completions had ended "
            "(left; the hf decode loop and vLLM time it, `generate` does not), and the "
            "longest completion over the median length (right). The cost of a generous cap: "
            "the whole batch waits on its few longest answers.",
            lambda: _panels_figure(report, "The rollout's long tail, per step", [
                Panel("perf/rollout_tail_frac", "sampling time after 90% ended (%)",
                      "time on the last 10% of completions", "not recorded", percent=True),
                Panel("length/max_over_median", "longest / median length",
                      "longest vs median completion", "not recorded")]))
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
