"""PNG figures, each readable on its own: title, axis labels with units, legend.

Per-step values are noisy (the batch's prompt mix), so each curve is drawn as faint raw
points plus a centred rolling mean whose window is stated in the legend. Several runs get one
colour per arm; arms with several seeds are drawn as the mean over seeds with a min-max band.
"""

from __future__ import annotations

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

from grpo_cli.report.censoring import TARGET_TRUNCATION  # noqa: E402
from grpo_cli.report.load import display_name  # noqa: E402
from grpo_cli.report.model import Figure, Report, RunView  # noqa: E402

DPI = 110
WIDE = (9.0, 4.6)
RAW_ALPHA = 0.25


def smoothing_window(n_steps: int) -> int:
    """About 5% of the run, odd (1 = no smoothing for short runs, at most 201 steps)."""
    w = max(1, min(200, round(n_steps / 20)))
    return w + 1 if w > 1 and w % 2 == 0 else w  # odd: the centred window is symmetric


def smooth(y: pd.Series, w: int) -> pd.Series:
    return y.rolling(w, center=True, min_periods=1).mean() if w > 1 else y


def _colors(n: int) -> list:
    cmap = plt.get_cmap("tab10" if n <= 10 else "viridis")
    return [cmap(i if n <= 10 else i / max(n - 1, 1)) for i in range(n)]


def _save(fig: plt.Figure, path: Path) -> None:
    try:
        fig.savefig(path, dpi=DPI, bbox_inches="tight")
    finally:
        plt.close(fig)


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
    series = [v.table[col].dropna() for v in views]
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
           percent: bool = False, empty: str = "no data", zero_line: bool = False) -> None:
    drawn = False
    colors = _colors(len(report.groups))
    for color, (group, views) in zip(colors, report.groups.items(), strict=True):
        label = views[0].run.label if len(views) == 1 else group
        drawn |= _draw_group(ax, views, col, color, label, report.smoothing)
    if not drawn:
        _no_data(ax, empty)
    elif zero_line:
        ax.axhline(0, color="0.4", lw=0.9)
    ax.set_title(title, fontsize=11)
    _step_axis(ax)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if percent:
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))


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
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), fontsize=8.5,
               frameon=False, ncol=2)


def _panels_figure(report: Report, path: Path, suptitle: str, panels: list[Panel]) -> None:
    fig, axes = plt.subplots(1, len(panels), figsize=(WIDE[0] if len(panels) == 1 else 10.5,
                                                      WIDE[1]), squeeze=False)
    for ax, p in zip(axes[0], panels, strict=True):
        _panel(ax, report, p.col, p.ylabel, p.title if len(panels) > 1 else suptitle,
               p.percent, p.empty, p.zero_line)
    if len(panels) > 1:
        fig.suptitle(suptitle, fontsize=12)
    fig.tight_layout()
    _legend(fig, list(axes[0]), report)
    _save(fig, path)


# --- the figures --------------------------------------------------------------------------


def heatmap_figure(view: RunView, path: Path, w: int) -> None:
    h = view.heatmap
    assert h is not None
    fig, ax = plt.subplots(figsize=WIDE)
    steps = h.steps.astype(np.float64)
    if steps.size > 1:
        mids = (steps[1:] + steps[:-1]) / 2
        x = np.concatenate([[steps[0] - (mids[0] - steps[0])], mids,
                            [steps[-1] + (steps[-1] - mids[-1])]])
    else:
        x = np.array([steps[0] - 0.5, steps[0] + 0.5])
    y = h.edges
    mesh = ax.pcolormesh(x, y, h.share, cmap="viridis", shading="flat",
                         norm=PowerNorm(0.5, vmin=0, vmax=max(float(h.share.max()), 1e-9)))
    cbar = fig.colorbar(mesh, ax=ax, pad=0.02)
    cbar.set_label("share of the step's completions (sqrt colour scale)")
    cbar.ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    caps = view.table["max_len"].reindex(h.steps).ffill().bfill()
    if caps.notna().all():  # one flat segment across each step's cell
        ax.stairs(caps.to_numpy() + h.cap_offset, x, baseline=None, color="red", lw=2.5,
                  label="cap in force (max_len)")
    caps = caps.dropna()
    mean = view.table["length/mean"].dropna()
    if len(mean):
        ax.plot(mean.index, smooth(mean, w).values, color="white", lw=1.2, ls="--",
                label=f"mean length ({_smooth_label(w)})")
    bin_w = h.edges[1] - h.edges[0]
    ax.set_title(f"Response length distribution per step — {_who(view)}", fontsize=11)
    _step_axis(ax)
    ax.set_ylabel(f"response length (tokens, bins of {bin_w:.0f})")
    top = max(float(y[-1]), float(caps.max()) + h.cap_offset if len(caps) else 0.0)
    ax.set_ylim(y[0], top + 0.04 * top)  # headroom so the cap line is visible
    ax.set_facecolor("0.85")  # outside the bins: no data
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=8,
              facecolor="0.3", labelcolor="white", framealpha=1.0, edgecolor="0.3")
    fig.tight_layout()
    _save(fig, path)


def length_quantiles_figure(view: RunView, path: Path, w: int) -> None:
    t = view.table
    fig, ax = plt.subplots(figsize=WIDE)
    if t[["length/p10", "length/p90"]].notna().all(axis=1).any():
        band = t[["length/p10", "length/p90"]].dropna()
        ax.fill_between(band.index, smooth(band["length/p10"], w), smooth(band["length/p90"], w),
                        color="tab:blue", alpha=0.18, lw=0, label="p10–p90")
    p50 = t["length/p50"].dropna()
    if len(p50):
        ax.plot(p50.index, smooth(p50, w).values, color="tab:blue", lw=1.3, ls="--",
                label="median (p50)")
    mean = t["length/mean"].dropna()
    if w > 1:
        ax.plot(mean.index, mean.values, color="tab:blue", alpha=RAW_ALPHA, lw=0.8,
                marker="o" if len(mean) <= 80 else None, ms=2.5)
    ax.plot(mean.index, smooth(mean, w).values, color="tab:blue", lw=2, label="mean",
            marker="o" if w <= 1 else None, ms=3)
    natural = t["val/length/mean"].dropna()
    if len(natural):
        ax.plot(natural.index, natural.values, color="tab:purple", lw=1.5, ls="--", marker="o",
                ms=3, label=NATURAL)
    caps = t["max_len"].dropna()
    if len(caps):
        ax.step(caps.index, caps.values, where="mid", color="tab:red", lw=1.5, ls=":",
                label="cap in force (max_len)")
    ax.set_ylim(bottom=0, top=max(float(caps.max()) if len(caps) else 0,
                                  float(t["length/p90"].max(skipna=True) or 0),
                                  float(natural.max()) if len(natural) else 0,
                                  float(mean.max()) if len(mean) else 1) * 1.08)
    ax.set_title(f"Response length over training — {_who(view)}", fontsize=11)
    _step_axis(ax)
    ax.set_ylabel("response length (tokens)")
    ax.grid(alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=handles + _style_handles(w), loc="upper left", bbox_to_anchor=(1.01, 1),
              fontsize=8, frameon=False)
    fig.tight_layout()
    _save(fig, path)


def km_figure(view: RunView, path: Path) -> None:
    km, advice = view.km, view.advice
    assert km is not None
    fig, ax = plt.subplots(figsize=WIDE)
    x = np.concatenate([[0.0], km.times])
    s = np.concatenate([[1.0], km.probs])
    lo = np.concatenate([[1.0], np.nan_to_num(km.ci_low, nan=0.0)])
    hi = np.concatenate([[1.0], np.nan_to_num(km.ci_high, nan=1.0)])
    ax.fill_between(x, lo, hi, step="post", color="tab:blue", alpha=0.18, lw=0,
                    label="95% confidence band")
    ax.step(x, s, where="post", color="tab:blue", lw=2,
            label="Kaplan–Meier estimate (truncated = censored)")
    # The naive curve treats a truncated length as the true length.
    ax.step(np.concatenate([[0.0], km.naive_times]), np.concatenate([[1.0], km.naive_probs]),
            where="post", color="0.45", ls=":", lw=1.5,
            label="naive (a truncated length taken as the length)")
    ax.axhline(TARGET_TRUNCATION, color="0.3", lw=1, ls="--",
               label=f"{TARGET_TRUNCATION:.0%} truncated (target)")
    xmax = km.max_observed
    if advice is not None and advice.current_cap:
        ax.axvline(advice.current_cap, color="tab:red", lw=1.5, ls=":",
                   label=f"current cap ({advice.current_cap} tokens)")
    if advice is not None and advice.recommended_cap:
        ax.axvline(advice.recommended_cap, color="tab:green", lw=1.5,
                   label=f"recommended cap ({advice.recommended_cap} tokens)")
        xmax = max(xmax, advice.recommended_cap)
    right = xmax * 1.25 + 1
    if km.censored_at_max:
        ax.axvspan(km.max_observed, right, color="0.85", alpha=0.6, lw=0,
                   label="unknown: beyond the longest observation")
    ax.set_xlim(0, right)
    ax.set_ylim(0, 1.02)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    span = (f"step {km.steps[0]}" if km.steps[0] == km.steps[1]
            else f"steps {km.steps[0]}–{km.steps[1]}")
    ax.set_title(f"Length without the cap (Kaplan–Meier, {span}, n={km.n})\n"
                 f"{_who(view)}", fontsize=11)
    ax.set_xlabel("response length x (tokens)")
    ax.set_ylabel("completions longer than x (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    fig.tight_layout()
    _save(fig, path)


def correct_incorrect_figure(report: Report, path: Path) -> None:
    fig, ax = plt.subplots(figsize=WIDE)
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
        extra = [Line2D([], [], color="0.3", lw=2, label="solid: correct"),
                 Line2D([], [], color="0.3", lw=2, ls="--", label="dashed: incorrect")]
    if not drawn:
        _no_data(ax, "no correctness recorded (the reward reports no `correct`/`accuracy`)")
    ax.set_title("Mean length of correct vs incorrect completions", fontsize=11)
    _step_axis(ax)
    ax.set_ylabel("mean response length (tokens)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _legend(fig, [ax], report, extra)
    _save(fig, path)


NATURAL = "natural length: val/ probe at a generous cap"


def length_overlay_figure(report: Report, path: Path) -> None:
    fig, ax = plt.subplots(figsize=WIDE)
    _panel(ax, report, "length/mean", "mean response length (tokens)",
           "Mean response length per arm (dotted: the arm's cap; dashed: natural length)")
    natural = False
    for color, views in zip(_colors(len(report.groups)), report.groups.values(), strict=True):
        caps = views[0].table["max_len"].dropna()
        if len(caps):
            ax.step(caps.index, caps.values, where="mid", color=color, lw=1, ls=":")
        # The probe is sparse (every val_every steps): drawn unsmoothed, with markers.
        natural |= _draw_group(ax, views, "val/length/mean", color, None, 1, "--")
    ax.set_ylim(bottom=0)
    fig.tight_layout()
    extra = [Line2D([], [], color="0.3", lw=2, ls="--", marker="o", ms=3, label=NATURAL)]
    _legend(fig, [ax], report, extra if natural else None)
    _save(fig, path)


def draw_all(report: Report, out: Path) -> list[Figure]:
    """Write every figure the data allows into ``out``; returns them in reading order."""
    figs: list[Figure] = []
    w = report.smoothing
    multi = len(report.views) > 1

    def add(name: str, title: str, caption: str, draw: Callable[[Path], None],
            run_id: str | None = None) -> None:
        draw(out / name)
        figs.append(Figure(name, title, caption, run_id))

    def per_run(view: RunView, i: int, parts: tuple[str, ...]) -> None:
        stem, rid = f"run{i:02d}", view.run.run_id
        if "length" in parts:
            add(f"{stem}_length.png", f"Length over training — {display_name(view.run)}",
                "Mean, median and p10–p90 band of response length per step, with the cap.",
                lambda p: length_quantiles_figure(view, p, w), rid)
        if "heatmap" in parts and view.heatmap is not None:
            add(f"{stem}_heatmap.png", f"Length heat map — {display_name(view.run)}",
                f"Share of completions per length bin and step (from {view.heatmap.source}); "
                "the red line is the cap in force.",
                lambda p: heatmap_figure(view, p, w), rid)
        if "km" in parts and view.km is not None:
            add(f"{stem}_km.png", f"Length without the cap — {display_name(view.run)}",
                "Kaplan–Meier survival of response length on the last 10% of steps, "
                "truncated completions treated as right-censored.",
                lambda p: km_figure(view, p), rid)

    if multi:
        add("length_mean.png", "Mean length per arm",
            "Mean response length per step for each arm; dotted lines are the caps, dashed "
            "lines the natural length (the val/ probe: fixed prompts at a generous cap).",
            lambda p: length_overlay_figure(report, p))
    else:  # one run: its length curves lead
        per_run(report.views[0], 0, ("length", "heatmap"))
    add("clip_ratio.png", "Clip ratio", "Share of each step's completions stopped by the cap.",
        lambda p: _panels_figure(report, p, "Truncated completions (clip ratio) per step", [
            Panel("length/clip_ratio", "truncated completions (% of step)", "clip ratio",
                  "no clip ratio recorded", percent=True)]))
    add("reward_accuracy.png", "Reward and accuracy",
        "Mean reward per step (left) and accuracy = mean of `correct` where known (right).",
        lambda p: _panels_figure(report, p, "Reward and accuracy per step", [
            Panel("reward/mean", "mean reward (reward units)", "reward", "no reward"),
            Panel("accuracy", "accuracy (% correct)", "accuracy", "no correctness recorded",
                  percent=True)]))
    add("correlation.png", "Reward–length correlation",
        "Spearman correlation of reward and length over the whole batch (left) and the mean "
        "over prompt groups (right); below 0: longer completions earn less.",
        lambda p: _panels_figure(report, p, "Reward–length correlation per step", [
            Panel("corr/reward_length_spearman", "Spearman ρ (reward, length)", "whole batch",
                  "no batch correlation recorded", zero_line=True),
            Panel("corr/within_group_spearman", "mean Spearman ρ within groups",
                  "within prompt groups", "no within-group correlation recorded",
                  zero_line=True)]))
    add("correct_incorrect.png", "Correct vs incorrect length",
        "Mean length of correct and incorrect completions per step.",
        lambda p: correct_incorrect_figure(report, p))
    for i, view in enumerate(report.views):
        per_run(view, i, ("km",) if not multi else ("length", "heatmap", "km"))
    return figs
