"""The report's figures: formats, the shared colour scale, length-by-outcome analyses checked
against pandas, and that every figure the pages reference exists and parses.

No headless browser is installable here from PyPI alone (playwright and pyppeteer fetch their
browsers from a CDN at install time; kaleido's bundled Chromium only runs plotly exports), so
the pages are checked by parsing every referenced file instead (PNG with PIL, SVG as XML, PDF
by its header and page objects).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest

from grpo_cli.errors import ConfigError
from grpo_cli.report import build_report
from grpo_cli.report.aggregate import Heatmap, rollout_heatmap
from grpo_cli.report.load import Rollouts, load_targets, read_rollout_columns
from grpo_cli.report.outcomes import (
    accuracy_by_length,
    outcome_heatmaps,
    reward_components,
    reward_is_accuracy,
    shared_color_limits,
)
from grpo_cli.report.style import parse_formats
from grpo_cli.report.synthetic import write_synthetic_run
from grpo_cli.telemetry.histograms import length_histograms, pop_histograms
from grpo_cli.telemetry.store import read_rollouts
from tests.helpers import check_pages, check_pdf

matplotlib.use("Agg")


# --- formats ------------------------------------------------------------------------------


def test_parse_formats() -> None:
    assert parse_formats(None) == ("png",)
    assert parse_formats("svg,pdf") == ("svg", "pdf")
    assert parse_formats(" SVG , png,svg") == ("svg", "png")
    assert parse_formats(["svg", "pdf,png"]) == ("svg", "pdf", "png")
    for bad in ("jpg", "svg,eps", "", ","):
        with pytest.raises(ConfigError, match="png, svg, pdf"):
            parse_formats(bad)


def test_svg_and_pdf_report_of_a_sweep_parses_everywhere(tmp_path: Path) -> None:
    for i, pattern in enumerate(("healthy", "collapse")):
        write_synthetic_run(tmp_path, f"r{i}", pattern, steps=12, seed=i)
    out = build_report(["r0", "r1"], out=tmp_path / "rep", runs_dir=tmp_path,
                       formats="svg,pdf")
    linked = check_pages(out)
    assert all(n.endswith(".svg") for n in linked)
    stems = {Path(n).stem for n in linked}
    assert {"length_heatmaps", "accuracy_by_length", "run00_outcomes", "run01_outcomes",
            "reward_accuracy"} <= stems
    for stem in stems:  # each figure in each format asked for, and no PNG
        check_pdf((out / f"{stem}.pdf").read_bytes())
        assert not (out / f"{stem}.png").exists()
    page = (out / "report.html").read_text()
    assert "data:image/svg+xml;base64," in page and "data:image/png" not in page
    # binary reward (reward == correct at every step): one panel, labelled so
    assert "Reward = accuracy" in page


def test_pdf_only_still_gives_the_page_png(tmp_path: Path) -> None:
    write_synthetic_run(tmp_path, "one", "loss_bias", steps=10)
    out = build_report(["one"], out=tmp_path / "rep", runs_dir=tmp_path, formats="pdf")
    linked = check_pages(out)
    assert all(n.endswith(".png") for n in linked)
    for name in linked:
        check_pdf((out / name).with_suffix(".pdf").read_bytes())


def test_default_png_report_parses(tmp_path: Path) -> None:
    write_synthetic_run(tmp_path, "one", "collapse", steps=10)
    out = build_report(["one"], out=tmp_path / "rep", runs_dir=tmp_path)
    linked = check_pages(out)
    assert all(n.endswith(".png") for n in linked)
    assert not list(out.glob("*.svg")) and not list(out.glob("*.pdf"))


# --- shared scales ------------------------------------------------------------------------


def _hm(values: np.ndarray) -> Heatmap:
    return Heatmap(np.arange(values.shape[1]), np.arange(values.shape[0] + 1) + 0.5, values,
                   "rollouts", 0.5)


def test_shared_color_limits_cover_every_panel() -> None:
    a, b = _hm(np.array([[0.6, 0.1], [0.4, 0.9]])), _hm(np.array([[0.35], [0.65]]))
    assert shared_color_limits([a, b]) == (0.0, 0.9)
    assert shared_color_limits([b]) == (0.0, 0.65)
    assert shared_color_limits([_hm(np.zeros((2, 2)))])[1] > 0  # a valid norm when all 0


def test_comparison_figure_panels_share_norm_and_axes(tmp_path: Path) -> None:
    from matplotlib.collections import QuadMesh

    from grpo_cli.report import analyse_run
    from grpo_cli.report.figures import comparison_heatmaps, heatmap_grid_figure
    from grpo_cli.report.model import Report

    write_synthetic_run(tmp_path, "a", "healthy", steps=8)  # cap 64
    write_synthetic_run(tmp_path, "b", "collapse", steps=8)  # cap 48, 60% truncated
    views = [analyse_run(r) for r in load_targets(["a", "b"], tmp_path).runs]
    report = Report("t", ["a", "b"], views, {v.run.run_id: [v] for v in views}, 1)
    maps, vmin, vmax = comparison_heatmaps(report)
    # own scales differ (as the per-run heat maps show them); the shared one covers both
    own = [float(v.heatmap.share.max()) for v in views]
    assert own[0] != pytest.approx(own[1])
    assert vmin == 0 and vmax == pytest.approx(max(float(h.share.max()) for _, h in maps))
    assert maps[0][1].edges.tolist() == maps[1][1].edges.tolist()  # common bins
    fig = heatmap_grid_figure(report)
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    panels = [ax for ax in fig.axes if ax not in bars and ax.get_visible()]
    assert len(bars) == 1 and len(panels) == 2
    meshes = [c for ax in panels for c in ax.collections if isinstance(c, QuadMesh)]
    assert len(meshes) == 2
    assert {(m.norm.vmin, m.norm.vmax) for m in meshes} == {(vmin, vmax)}
    assert len({ax.get_xlim() for ax in panels}) == 1
    # each panel's length axis is its own run's: up to its cap (64 / 48 tokens) and no further
    tops = [ax.get_ylim()[1] for ax in panels]
    assert tops == pytest.approx([64.5 * 1.04, 48.5 * 1.04])
    matplotlib.pyplot.close(fig)


# --- length by outcome, against pandas ----------------------------------------------------


def _pandas_bins(rows: pd.DataFrame, edges: np.ndarray, first: int, last: int) -> pd.DataFrame:
    """Per-bin counts with pd.cut + groupby: right-closed bins (e_k, e_k+1], lengths past the
    last edge in the last bin."""
    sel = rows[(rows["step"] >= first) & (rows["step"] <= last)]
    graded = sel[sel["correct"].notna()]
    b = pd.cut(graded["response_length"].clip(upper=edges[-1]), edges, right=True,
               include_lowest=True, labels=False)
    right = graded["correct"] >= 0.5
    out = pd.DataFrame({"n": right.groupby(b).size(), "correct": right.groupby(b).sum()})
    tb = pd.cut(sel["response_length"].clip(upper=edges[-1]), edges, right=True,
                include_lowest=True, labels=False)
    out["truncated"] = sel["truncated"].groupby(tb).sum()
    return out.reindex(range(len(edges) - 1), fill_value=0).fillna(0).astype(int)


@pytest.mark.parametrize("pattern", ["loss_bias", "collapse", "explosion"])
def test_accuracy_by_length_matches_pandas(tmp_path: Path, pattern: str) -> None:
    path = write_synthetic_run(tmp_path, "r", pattern, steps=30, seed=3)
    rows = read_rollouts(path)
    r = read_rollout_columns(path)
    assert r is not None
    a = accuracy_by_length(r, 4)
    assert a is not None
    assert a.early.steps == (0, 3) and a.late.steps == (26, 29)
    assert a.edges[0] == 0 and a.edges[-1] >= rows["response_length"].max()
    assert np.all(np.diff(a.edges) == a.edges[1])  # whole-token, equal widths
    for win in (a.early, a.late):
        expect = _pandas_bins(rows, a.edges, *win.steps)
        assert win.n.tolist() == expect["n"].tolist()
        assert win.correct.tolist() == expect["correct"].tolist()
        assert win.truncated.tolist() == expect["truncated"].tolist()
        acc = (expect["correct"] / expect["n"]).where(expect["n"] >= 5)
        np.testing.assert_allclose(win.accuracy, acc.to_numpy(float), equal_nan=True)
        lo, hi = win.wilson()
        ok = ~np.isnan(win.accuracy)
        assert np.all(lo[ok] <= win.accuracy[ok]) and np.all(win.accuracy[ok] <= hi[ok])
    if pattern == "loss_bias":  # planted: incorrect answers drift longer
        late = a.late.accuracy
        first, last = late[~np.isnan(late)][0], late[~np.isnan(late)][-1]
        assert first > 0.8 > 0.2 > last


def test_accuracy_by_length_needs_graded_rows() -> None:
    r = Rollouts(np.zeros(4, dtype=np.int64), np.array([3, 4, 5, 6]), np.zeros(4, bool),
                 np.zeros(4, np.float32), np.full(4, np.nan, np.float32))
    assert accuracy_by_length(r) is None and outcome_heatmaps(r) is None


def test_outcome_heatmaps_add_up_to_the_heat_map(tmp_path: Path) -> None:
    r = read_rollout_columns(write_synthetic_run(tmp_path, "r", "collapse", steps=6))
    assert r is not None
    r.correct[::7] = np.nan  # some ungraded rows: in neither split
    correct, incorrect = outcome_heatmaps(r)  # type: ignore[misc]
    whole = rollout_heatmap(r)
    graded = rollout_heatmap(Rollouts(r.step, r.length, r.truncated, r.reward, r.correct))
    assert correct.edges.tolist() == whole.edges.tolist()
    ungraded = np.isnan(r.correct)
    for j, step in enumerate(whole.steps):
        here = r.step == step
        known_share = 1 - ungraded[here].mean()
        assert (correct.share[:, j] + incorrect.share[:, j]).sum() == pytest.approx(known_share)
        assert correct.share[:, j].sum() == pytest.approx((r.correct[here] >= 0.5).mean())
    assert np.all(correct.share + incorrect.share <= graded.share + 1e-12)


def test_reward_equals_accuracy_and_components() -> None:
    table = pd.DataFrame({"reward/mean": [0.0, 0.5, 1.0], "accuracy": [0.0, 0.5, 1.0],
                          "reward/std": [0.1] * 3, "reward/format_mean": [0.2, 0.3, 0.4],
                          "reward/truncated_mean": [0.0] * 3, "reward/zero_std_frac": [0.5] * 3,
                          "reward/accuracy_mean": [np.nan] * 3})
    assert reward_is_accuracy(table)
    assert reward_components(table) == ["reward/format_mean"]
    table.loc[1, "reward/mean"] = 0.6  # a format bonus: not binary any more
    assert not reward_is_accuracy(table)
    assert not reward_is_accuracy(table.drop(columns="accuracy"))
    assert not reward_is_accuracy(pd.DataFrame({"reward/mean": [1.0], "accuracy": [np.nan]}))


# --- the split histograms logged to W&B -----------------------------------------------------


def test_length_histograms_split_by_correctness() -> None:
    lengths = np.array([1, 5, 8, 8, 16, 3])
    correct = np.array([1.0, 0.0, 1.0, np.nan, 0.0, 1.0])
    h = length_histograms(lengths, correct, 16)
    assert set(h) == {"length/hist", "length/hist_correct", "length/hist_incorrect"}
    edges = h["length/hist"][1]
    for key in h:
        assert h[key][1].tolist() == edges.tolist()  # one set of edges
    assert h["length/hist"][0].sum() == 6
    assert h["length/hist_correct"][0].sum() == 3 and h["length/hist_incorrect"][0].sum() == 2
    assert h["length/hist_correct"][0][-1] == 0 and h["length/hist_incorrect"][0][-1] == 1
    assert set(length_histograms(lengths, None, 16)) == {"length/hist"}
    assert set(length_histograms(lengths, np.full(6, np.nan), 16)) == {"length/hist"}
    assert set(length_histograms(lengths, correct, 16, "val/")) == {
        "val/length/hist", "val/length/hist_correct", "val/length/hist_incorrect"}
    metrics = {"val/length/mean": 3.0, **length_histograms(lengths, correct, 16, "val/")}
    popped = pop_histograms(metrics)
    assert set(metrics) == {"val/length/mean"} and len(popped) == 3
