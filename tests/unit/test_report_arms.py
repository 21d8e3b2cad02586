"""Seeds aggregated into arms: statistics against scipy, the tables against a pandas
recomputation from the run stores, the window option, and advice that never contradicts the
run (no lower cap for a run that truncates nothing, no remedy that is the current setting)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from grpo_cli.errors import ConfigError
from grpo_cli.report import analyse_run, build_report
from grpo_cli.report.aggregate import WindowSpec, parse_window, window
from grpo_cli.report.censoring import cap_advice, kaplan_meier
from grpo_cli.report.diagnosis import Finding, Remedy, applicable, arm_findings, diagnose
from grpo_cli.report.load import load_store_run
from grpo_cli.report.stats import mean_ci, welch
from grpo_cli.report.synthetic import write_synthetic_run

# --- statistics -----------------------------------------------------------------------------


def test_mean_ci_is_the_t_interval() -> None:
    x = np.array([3.0, 5.0, 4.0, 8.0])
    e = mean_ci(x)
    low, high = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    assert (e.mean, e.low, e.high, e.n) == (pytest.approx(5.0), pytest.approx(low),
                                            pytest.approx(high), 4)
    # by hand: sd = sqrt(14/3), t(0.975, 3) = 3.182446
    assert e.half == pytest.approx(3.182446 * math.sqrt(14 / 3) / 2, rel=1e-6)
    one = mean_ci([7.0, math.nan])
    assert one.mean == 7.0 and one.n == 1 and math.isnan(one.half)
    assert mean_ci([]).n == 0


def test_welch_matches_scipy() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(0, 1, 5), rng.normal(1.5, 3, 4)
    got = welch(a, b)
    ref = stats.ttest_ind(b, a, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert got.tested and got.diff == pytest.approx(b.mean() - a.mean())
    assert got.p == pytest.approx(ref.pvalue) and got.df == pytest.approx(ref.df)
    assert (got.low, got.high) == (pytest.approx(ci.low), pytest.approx(ci.high))
    short = welch([1.0], [2.0, 3.0])
    assert not short.tested and "cannot be tested" in short.reason and math.isnan(short.p)
    assert not welch([1.0, 1.0], [1.0, 1.0]).tested


# --- windows --------------------------------------------------------------------------------


def test_window_option_parses_steps_and_shares() -> None:
    assert parse_window("10") == WindowSpec(fraction=None, steps=10)
    assert parse_window("25%") == WindowSpec(fraction=0.25)
    assert parse_window(None) == WindowSpec()
    assert window(40, parse_window("10")) == 10 and window(40, parse_window("10%")) == 4
    assert window(5, parse_window("10")) == 5 and window(3, parse_window("10%")) == 1
    assert parse_window("10").label == "10 steps" and parse_window("10%").label == "10% of steps"
    for bad in ("0", "-3", "abc", "80%", "0%"):
        with pytest.raises(ValueError, match="--window"):
            parse_window(bad)


# --- a seeds x arms sweep, recomputed from the stores with pandas -------------------------

SEEDS = (0, 1, 2)
ARMS = (("collapse", 48), ("healthy", 160))
EVIL_SAMPLES = [{"step": 0, "prompt": "p", "completion": "same reply", "length": 2,
                 "truncated": False, "reward": 1.0}] * 3 + [
    {"step": 0, "prompt": "q", "completion": "x < 6 & y > 0.25", "length": 9,
     "truncated": False, "reward": 0.0},
    {"step": 19, "prompt": "r", "completion": "same reply", "length": 2, "truncated": False,
     "reward": 1.0},
    {"step": 19, "prompt": "s", "completion": "late one", "length": 2, "truncated": False,
     "reward": 1.0}]


@pytest.fixture
def no_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    """The numbers are under test here, not the drawing (tests/unit/test_report_render.py
    draws): skip matplotlib to keep the test fast."""
    import grpo_cli.report.figures as figures

    monkeypatch.setattr(figures, "draw_all", lambda report, out, *a, **k: [])


def _sweep(root: Path, steps: int = 20) -> str:
    sweep = root / "sweeps" / "sweep-arms"
    (sweep / "arms").mkdir(parents=True)
    arms, i = [], 0
    for pattern, cap in ARMS:
        for seed in SEEDS:
            rid = f"sweep-arms-{i:03d}"
            write_synthetic_run(root, rid, pattern, steps=steps, prompts=4, n=8, cap=cap,
                                seed=seed, samples=EVIL_SAMPLES)
            arms.append({"index": i, "overrides": [f"max_len={cap}", f"synthetic={pattern}",
                                                   f"seed={seed}"],
                         "run_id": rid, "status": "completed"})
            i += 1
    (sweep / "manifest.json").write_text(json.dumps({"sweep_id": "sweep-arms", "arms": arms}))
    return "sweep-arms"


def _md_tables(md: str) -> dict[str, list[dict[str, str]]]:
    """Every Markdown table after a **caption** line, as rows of header -> cell."""
    out: dict[str, list[dict[str, str]]] = {}
    for m in re.finditer(r"\*\*(.+?)\*\*\n\n((?:\|.*\|\n)+)", md):
        lines = m.group(2).strip().splitlines()
        split = [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines]
        out.setdefault(m.group(1), [dict(zip(split[0], row, strict=True)) for row in split[2:]])
    return out


def _per_seed(run_dir: Path, w_steps: int) -> dict[str, float]:
    """Window numbers straight from metrics.jsonl and the rollout Parquet files."""
    m = pd.read_json(run_dir / "metrics.jsonl", lines=True).sort_values("step")
    parts = sorted((run_dir / "rollouts").rglob("*.parquet"))
    r = pd.concat([pd.read_parquet(p, columns=["step", "correct"]) for p in parts])
    acc = r.groupby("step")["correct"].mean().sort_index()
    head, tail = m.head(w_steps), m.tail(w_steps)
    first, last = head["length/mean"].mean(), tail["length/mean"].mean()
    return {"len_first": first, "len_last": last, "change": 100 * (last - first) / first,
            "clip_first": head["length/clip_ratio"].mean(),
            "clip_last": tail["length/clip_ratio"].mean(),
            "reward_first": head["reward/mean"].mean(), "reward_last": tail["reward/mean"].mean(),
            "acc_first": acc.head(w_steps).mean(), "acc_last": acc.tail(w_steps).mean()}


def _cell(values: list[float], spec: str, unit: str = "", share: bool = False) -> str:
    x = np.asarray(values, dtype=float)
    mean = x.mean()
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    if share:
        return f"{mean:.0%} ± {half:.0%}"
    return f"{format(mean, spec)}{unit} ± {format(half, spec.lstrip('+'))}{unit}"


@pytest.mark.parametrize("window_arg, w_steps", [(None, 2), ("5", 5)])
def test_arm_tables_match_a_recomputation_from_the_stores(
        tmp_path: Path, no_figures: None, window_arg: str | None, w_steps: int) -> None:
    sweep = _sweep(tmp_path)
    out = build_report([sweep], runs_dir=tmp_path, window=window_arg)
    md = (out / "report.md").read_text()
    tables = _md_tables(md)
    label = "10% of steps" if window_arg is None else "5 steps"
    length = tables["Length and truncation"]
    reward = tables["Reward and accuracy"]
    assert f"length, first {label} (tokens)" in length[0]  # the window is in the headers
    assert [row["arm"] for row in length] == ["max_len=48 synthetic=collapse",
                                              "max_len=160 synthetic=healthy"]
    changes = {}
    for a, (pattern, _) in enumerate(ARMS):
        seeds = [_per_seed(tmp_path / f"sweep-arms-{3 * a + k:03d}", w_steps) for k in SEEDS]
        col = {k: [s[k] for s in seeds] for k in seeds[0]}
        changes[pattern] = col["change"]
        row, rrow = length[a], reward[a]
        assert row["seeds (n)"] == "3 (0, 1, 2)"
        assert row["steps (window)"] == f"20 (window {w_steps})"
        assert row[f"length, first {label} (tokens)"] == _cell(col["len_first"], ".1f")
        assert row[f"length, last {label} (tokens)"] == _cell(col["len_last"], ".1f")
        assert row["change first → last"] == _cell(col["change"], "+.0f", "%")
        assert row[f"clip, first {label}"] == _cell(col["clip_first"], "", share=True)
        assert row[f"clip, last {label}"] == _cell(col["clip_last"], "", share=True)
        assert rrow[f"reward, first {label}"] == _cell(col["reward_first"], ".3f")
        assert rrow[f"reward, last {label}"] == _cell(col["reward_last"], ".3f")
        assert rrow[f"accuracy, first {label}"] == _cell(col["acc_first"], "", share=True)
        assert rrow[f"accuracy, last {label}"] == _cell(col["acc_last"], "", share=True)
    # the between-arm comparison: per-arm change with its interval, Welch on the difference
    (per_arm,) = [v for k, v in tables.items() if k.startswith("Length change, first")]
    assert per_arm[0]["change (mean ± half-width)"] == _cell(changes["collapse"], "+.1f", "%")
    assert per_arm[0]["verdict"].startswith("falls")
    (pair,) = tables["Difference in length change between arms (percentage points)"]
    ref = stats.ttest_ind(changes["healthy"], changes["collapse"], equal_var=False)
    diff = np.mean(changes["healthy"]) - np.mean(changes["collapse"])
    assert pair["difference"] == f"{diff:+.1f} points"
    ci = ref.confidence_interval(0.95)
    assert pair["95% interval (Welch)"] == f"[{ci.low:+.1f}, {ci.high:+.1f}]"
    assert pair["Welch p"] == ("< 0.001" if ref.pvalue < 0.001 else f"{ref.pvalue:.3f}")
    # one diagnosis per arm, k of n seeds; per-seed rows only in the collapsed detail
    assert md.count("### max_len=48 synthetic=collapse") == 3  # diagnosis, KM, samples
    assert "Truncation pressure — 3 of 3 seeds" in md and "Healthy — 3 of 3 seeds" in md
    page = (out / "report.html").read_text()
    detail = page.split("<details><summary>Per-seed detail")
    assert len(detail) == 2 and "sweep-arms-004" not in detail[0].split("<h2>Length without")[0]
    assert "sweep-arms-004" in detail[1]
    # plain text in Markdown, and distinct samples
    assert "&lt;" not in md and "&gt;" not in md and "&amp;" not in md
    assert "x < 6 & y > 0.25" in md
    for arm_md in md.split("## Sample completions")[1].split("## Per-seed")[0].split("### ")[1:]:
        texts = re.findall(r"Completion:\n\n```text\n(.*?)\n```", arm_md, re.S)
        assert texts and len(texts) == len(set(texts)), texts


def test_arms_are_compared_on_the_probe_where_every_seed_has_one(
        tmp_path: Path, no_figures: None) -> None:
    """Natural length and probe accuracy: per-arm change and Welch between arms, from the
    probe's first and last readings (steps 0 and 19, outside the 2-step windows but nearest)."""
    sweep = _sweep(tmp_path)
    md = (build_report([sweep], runs_dir=tmp_path) / "report.md").read_text()
    assert "The probe's change" not in md  # no probe in any run: no probe tables
    rng = np.random.default_rng(7)
    natural, acc = {}, {}
    for i in range(len(ARMS) * len(SEEDS)):
        lengths, shares = rng.uniform(10, 40, 3), rng.integers(0, 17, 3) / 16
        with (tmp_path / f"sweep-arms-{i:03d}" / "metrics.jsonl").open("a") as f:
            for step, n, a in zip((0, 10, 19), lengths, shares, strict=True):
                f.write(json.dumps({"step": step, "val/length/mean": n, "val/accuracy": a}) + "\n")
        arm = ARMS[i // len(SEEDS)][0]
        natural.setdefault(arm, []).append(100 * (lengths[2] - lengths[0]) / lengths[0])
        acc.setdefault(arm, []).append(100 * (shares[2] - shares[0]))
    tables = _md_tables((build_report([sweep], runs_dir=tmp_path) / "report.md").read_text())
    (per_arm,) = [v for k, v in tables.items() if k.startswith("The probe's change")]
    for row, (arm, _) in zip(per_arm, ARMS, strict=True):
        assert row["natural length change"] == _cell(natural[arm], "+.1f", "%")
        assert row["probe accuracy change (points)"] == _cell(acc[arm], "+.1f")
    pairs = tables["Difference in the probe's change between arms (percentage points)"]
    assert [p["measure"] for p in pairs] == ["natural length change (%)",
                                              "probe accuracy change (points)"]
    for pair, values in zip(pairs, (natural, acc), strict=True):
        ref = stats.ttest_ind(values["healthy"], values["collapse"], equal_var=False)
        ci = ref.confidence_interval(0.95)
        diff = np.mean(values["healthy"]) - np.mean(values["collapse"])
        assert pair["difference"] == f"{diff:+.1f} points"
        assert pair["95% interval (Welch)"] == f"[{ci.low:+.1f}, {ci.high:+.1f}]"
        assert pair["Welch p"] == ("< 0.001" if ref.pvalue < 0.001 else f"{ref.pvalue:.3f}")
    # the length comparison is unchanged by the probe
    assert len(tables["Difference in length change between arms (percentage points)"]) == 1


def test_a_bad_window_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--window"):
        build_report(["x"], runs_dir=tmp_path, window="ten")


# --- advice that never contradicts the run ------------------------------------------------


def test_a_cap_that_truncates_nothing_is_never_lowered() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 90, 2000)
    advice = cap_advice(kaplan_meier(lengths, np.zeros(2000, dtype=bool)), current_cap=160)
    assert advice.recommended_cap is None and advice.keep
    assert "recommended" not in advice.message and "no change needed" in advice.message
    assert "would truncate ~" in advice.message
    # truncating a lot: the recommendation is above the cap
    lengths = np.minimum(rng.exponential(60, 2000) + 1, 64)
    km = kaplan_meier(lengths, lengths >= 64)
    hot = cap_advice(km, current_cap=64)
    assert hot.recommended_cap is None or hot.recommended_cap > 64


@pytest.mark.parametrize("pattern, cap", [("healthy", 160), ("healthy", 64),
                                          ("loss_bias", 128)])
def test_healthy_runs_get_no_lower_cap(tmp_path: Path, pattern: str, cap: int) -> None:
    view = analyse_run(load_store_run(write_synthetic_run(tmp_path, "r", pattern, steps=20,
                                                          cap=cap)))
    assert view.km is not None and view.km.n_censored == 0
    assert view.advice is not None and view.advice.recommended_cap is None
    for f in view.findings:
        for r in f.remedies:
            m = re.search(r"max_len=(\d+)", r.override)
            assert m is None or int(m.group(1)) > cap, r.override


def _pairs(override: str) -> list[tuple[str, str]]:
    return [tuple(t.split("=", 1)) for t in override.split() if "=" in t]  # type: ignore[misc]


def test_no_remedy_is_the_current_setting(tmp_path: Path) -> None:
    from dataclasses import replace

    base = analyse_run(load_store_run(write_synthetic_run(tmp_path, "b", "healthy",
                                                          steps=20))).summary
    drift = replace(base, len_change_pct=-40.0, len_final=base.len_initial * 0.6)
    config = {"length": {"penalty": "none"}, "algorithm": {"loss_agg_mode": "token-mean"},
              "data": {"max_response_length": 64}}
    for f in diagnose(drift, None, config):
        for r in f.remedies:
            assert r.override not in ("length.penalty=none", "algorithm.loss_agg_mode=token-mean")
    # a key the config lacks ran at the schema default (length.penalty: none)
    kinds = diagnose(drift, None, {"data": {"max_response_length": 64}})
    assert all(r.override != "length.penalty=none" for f in kinds for r in f.remedies)
    # collapse with overlong filtering already on: the mask remedy is not offered again
    path = write_synthetic_run(tmp_path, "c", "collapse", steps=20)
    run = load_store_run(path)
    run.config["algorithm"].update(mask_truncated=True, mask_truncated_in_adv=True)
    view = analyse_run(run)
    offered = [r.override for f in view.findings for r in f.remedies]
    assert offered and not any("mask_truncated" in o for o in offered)
    assert applicable(Remedy("algorithm.mask_truncated=true", ""), {"algorithm": {}})
    assert not applicable(Remedy("max_len=48", ""), {"data": {"max_response_length": 48}})
    assert applicable(Remedy("length.penalty=none", ""), {})  # unknown config: keep


def test_arm_findings_hold_in_most_seeds() -> None:
    tp = Finding("truncation-pressure", "Truncation pressure", "m")
    ok = Finding("healthy", "Healthy", "fine", severity="ok")
    drift = Finding("length-drift", "Length drift", "d", severity="info")
    got = arm_findings([[tp], [tp, drift], [ok]], [tp], [0, 1, 2])
    assert [f.kind for f in got] == ["truncation-pressure", "minority"]
    assert got[0].support == "2 of 3 seeds" and got[0].message.startswith("seed means:")
    assert "Length drift in 1 of 3 seeds (seed=1)" in got[1].message
    assert "Healthy in 1 of 3 seeds (seed=2)" in got[1].message
    mixed = arm_findings([[tp], [ok]], [ok], [0, 1])
    assert [f.kind for f in mixed] == ["mixed"]
    assert arm_findings([[tp]], [ok], [0]) == [tp]  # one seed: its own diagnosis


def test_figure_captions_follow_the_data_and_the_window(tmp_path: Path) -> None:
    for seed in (0, 1):
        write_synthetic_run(tmp_path, f"h{seed}", "healthy", steps=8, seed=seed)
    out = build_report(["h0", "h1"], out=tmp_path / "r", runs_dir=tmp_path, window="3")
    md = (out / "report.md").read_text()
    (caption,) = [line for line in md.splitlines() if line.startswith("*Mean length per arm")]
    assert "dashed" not in caption and "val_every=0" in caption  # no probe, no promise
    assert "on the last 3 steps" in md  # the KM figure's caption names the window
