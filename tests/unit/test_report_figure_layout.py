"""What a reader sees in the report's figures, on a two-arm sweep whose caps differ fivefold
(max_len 32 vs 160, two seeds each): short titles naming the arm, never the run id; the legend
under the plots, not in the title; one arm's cap, probe and training lines told apart; each
arm's own length range; a visible naive KM curve with a compact legend; truncated completions
apart from incorrect ones in the outcome heat maps.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.collections import QuadMesh
from matplotlib.lines import Line2D

from grpo_cli.report import analyse_run
from grpo_cli.report.aggregate import rollout_heatmap
from grpo_cli.report.figures import (
    OUTCOMES,
    TITLE_LINES,
    caps_differ,
    heatmap_figure,
    heatmap_grid_figure,
    km_figure,
    length_overlay_figure,
    length_quantiles_figure,
    outcome_class_heatmaps,
    outcomes_figure,
    wrap_title,
)
from grpo_cli.report.load import load_targets, read_rollout_columns
from grpo_cli.report.model import Report, RunView
from grpo_cli.report.style import STYLE
from grpo_cli.report.synthetic import write_synthetic_run

matplotlib.use("Agg")

CAPS = {"s": 32, "l": 160}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Report:
    root = tmp_path_factory.mktemp("sweep")
    ids = [f"{arm}{seed}-run7f3a" for arm in CAPS for seed in (0, 1)]
    for rid in ids:  # natural length 20 -> 80: the 32-token arm is cut, the 160 one is not
        write_synthetic_run(root, rid, "explosion", steps=12, cap=CAPS[rid[0]],
                            seed=int(rid[1]))
    views = [analyse_run(r) for r in load_targets(ids, root).runs]
    for v in views:  # a natural-length probe every 4 steps, above the small cap
        v.table.loc[::4, "val/length/mean"] = 45.0 if v.run.run_id[0] == "s" else 60.0
    groups: dict[str, list[RunView]] = {}
    for v in views:
        groups.setdefault(v.run.group, []).append(v)
    return Report("t", ids, views, groups, 3)


@pytest.fixture(autouse=True)
def _style() -> Iterator[None]:
    with plt.rc_context(STYLE):
        yield
    plt.close("all")


def _panels(fig: plt.Figure) -> list[plt.Axes]:
    return [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]


def _titles(fig: plt.Figure) -> list[str]:
    texts = [ax.get_title(loc) for ax in fig.axes for loc in ("left", "center", "right")]
    texts.append(fig.get_suptitle())
    return [t for t in texts if t]


def _all_figures(report: Report) -> list[plt.Figure]:
    figs = [length_overlay_figure(report), heatmap_grid_figure(report)]
    for v in report.views:
        figs += [heatmap_figure(v, 3), length_quantiles_figure(v, 3), outcomes_figure(v)]
        if v.km is not None:
            figs.append(km_figure(v))
    return figs


def _extent(artist, fig: plt.Figure):
    return artist.get_window_extent(fig.canvas.get_renderer())


# --- titles -------------------------------------------------------------------------------


def test_wrap_title_never_passes_two_lines() -> None:
    text = "Response length per step — " + "max_len=32 algorithm.loss_agg_mode=token-mean " * 3
    wrapped = wrap_title(text, 30)
    lines = wrapped.split("\n")
    assert len(lines) == TITLE_LINES and all(len(line) <= 30 for line in lines)
    assert wrapped.endswith("…")
    assert wrap_title("short", 30) == "short"
    assert wrap_title("a\nb", 30, 1) == "a b…"  # cut to one line: the rest is marked cut


def test_titles_name_the_arm_never_the_run_id(report: Report) -> None:
    figs = _all_figures(report)
    titles = [t for fig in figs for t in _titles(fig)]
    assert len(figs) == 2 + 4 * 4
    for t in titles:
        assert len(t.split("\n")) <= TITLE_LINES, t
        assert not any(rid in t for rid in report.targets), t  # never a run id
    joined = "\n".join(titles)
    for v in report.views:  # each run's own figures are titled with its label
        assert v.run.label in joined
    assert "max_len=32 seed=0" in joined and "max_len=160 (2 seeds)" in joined


# --- mean length per arm ------------------------------------------------------------------


def test_mean_length_legend_below_the_plots_not_in_the_title(report: Report) -> None:
    fig = length_overlay_figure(report)
    fig.canvas.draw()
    assert len(fig.legends) == 1
    legend = _extent(fig.legends[0], fig)
    lowest = min(_extent(ax, fig).y0 for ax in _panels(fig))
    assert legend.y1 <= lowest  # under every panel (and their x labels' axes)
    suptitle = fig.get_suptitle()
    for style_word in ("dotted", "dashed", "solid", "natural"):
        assert style_word not in suptitle
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any(lab.startswith("natural length") for lab in labels)
    assert any(lab.startswith("cap in force") for lab in labels)


def _role_lines(ax: plt.Axes) -> dict[str, Line2D]:
    """The panel's lines by role: the cap (dotted), the probe (dashed), training (solid)."""
    by_style = {":": "cap", "--": "probe", "-": "training"}
    return {by_style[ln.get_linestyle()]: ln for ln in ax.lines
            if ln.get_linestyle() in by_style}


def test_mean_length_cap_probe_and_training_lines_differ(report: Report) -> None:
    fig = length_overlay_figure(report)
    panels = _panels(fig)
    assert len(panels) == len(report.groups) == 2
    for ax in panels:
        lines = _role_lines(ax)
        assert set(lines) == {"cap", "probe", "training"}
        colors = {role: matplotlib.colors.to_hex(ln.get_color()) for role, ln in lines.items()}
        assert len(set(colors.values())) == 3, colors  # no two roles share a colour
        # the sparse probe never hides the training line: drawn beneath it, thinner
        assert lines["training"].get_zorder() > lines["probe"].get_zorder()
        assert lines["probe"].get_linewidth() < lines["training"].get_linewidth()
        assert lines["probe"].get_marker() not in (None, "None", "")


def test_mean_length_each_arm_on_its_own_scale_when_caps_differ(report: Report,
                                                                 tmp_path: Path) -> None:
    assert caps_differ(report)
    fig = length_overlay_figure(report)
    small, large = (ax.get_ylim()[1] for ax in _panels(fig))
    assert 45 < small < 60  # the 32-token arm: up to its probe, not squashed under 160
    assert large > 160
    # caps a little apart (48 vs 64): one shared scale, the arms compare directly
    for rid, cap in (("a", 48), ("b", 64)):
        write_synthetic_run(tmp_path, rid, "healthy", steps=6, cap=cap)
    views = [analyse_run(r) for r in load_targets(["a", "b"], tmp_path).runs]
    close = Report("t", ["a", "b"], views, {v.run.run_id: [v] for v in views}, 1)
    assert not caps_differ(close)
    tops = {ax.get_ylim()[1] for ax in _panels(length_overlay_figure(close))}
    assert len(tops) == 1 and tops.pop() > 64


# --- heat maps ----------------------------------------------------------------------------


def test_heatmap_grid_panels_span_their_own_lengths(report: Report) -> None:
    fig = heatmap_grid_figure(report)
    panels = _panels(fig)
    assert len(panels) == 4
    meshes = [c for ax in panels for c in ax.collections if isinstance(c, QuadMesh)]
    assert len({(m.norm.vmin, m.norm.vmax) for m in meshes}) == 1  # still one colour scale
    for ax, v in zip(panels, report.views, strict=True):
        cap = CAPS[v.run.run_id[0]]
        lo, hi = ax.get_ylim()
        assert cap + 0.5 < hi <= (cap + 0.5) * 1.05, (v.run.label, hi)
    # the band above the cap is named in the legend, not left unexplained
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any("above the cap" in lab for lab in labels)


# --- Kaplan–Meier -------------------------------------------------------------------------


def test_km_naive_curve_drawn_on_top_and_legend_compact(report: Report) -> None:
    view = report.views[0]
    assert view.km is not None
    fig = km_figure(view)
    ax = fig.axes[0]
    lines = {ln.get_label().split(" ")[0]: ln for ln in ax.lines}
    naive, km = lines["naive"], lines["Kaplan–Meier"]
    assert naive.get_zorder() > km.get_zorder()
    assert matplotlib.colors.to_hex(naive.get_color()) != matplotlib.colors.to_hex(
        km.get_color())
    assert naive.get_linestyle() != km.get_linestyle()
    fig.canvas.draw()
    legend = ax.get_legend()
    assert len(legend.get_texts()) <= 4
    assert _extent(legend, fig).height < 0.4 * _extent(ax, fig).height


# --- outcomes -----------------------------------------------------------------------------


def test_outcome_heatmaps_keep_truncated_apart(tmp_path: Path) -> None:
    # collapse: truncated completions are graded wrong; they must not count as "incorrect"
    r = read_rollout_columns(write_synthetic_run(tmp_path, "r", "collapse", steps=6))
    assert r is not None and r.truncated.any()
    r.correct[1::9] = np.nan  # some ungraded rows
    maps = outcome_class_heatmaps(r)
    assert maps is not None and len(maps) == len(OUTCOMES) == 3
    correct, incorrect, truncated = maps
    whole = rollout_heatmap(r)
    known, done = np.isfinite(r.correct), ~r.truncated
    for j, step in enumerate(whole.steps):
        here = r.step == step
        assert truncated.share[:, j].sum() == pytest.approx(r.truncated[here].mean())
        wrong = known & (r.correct < 0.5) & done
        assert incorrect.share[:, j].sum() == pytest.approx(wrong[here].mean())
        ungraded_done = (~known & done)[here].mean()
        total = sum(m.share[:, j].sum() for m in maps)
        assert total == pytest.approx(1 - ungraded_done)
    assert np.all(sum(m.share for m in maps) <= whole.share + 1e-12)


def test_outcomes_figure_has_a_truncated_heat_map(report: Report) -> None:
    fig = outcomes_figure(report.views[0])
    heat = [ax for ax in _panels(fig) if any(isinstance(c, QuadMesh) for c in ax.collections)]
    assert [ax.get_title().split(",")[0] for ax in heat] == ["correct", "incorrect",
                                                            "truncated"]
    # the truncated class holds every truncated completion of the 32-token arm: not empty
    truncated_mesh = next(c for c in heat[2].collections if isinstance(c, QuadMesh))
    assert np.nansum(truncated_mesh.get_array()) > 0
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert [lab for lab in labels if lab in {n for n, _ in OUTCOMES}] == [n for n, _ in OUTCOMES]
