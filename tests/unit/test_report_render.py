"""build_report end to end on synthetic stores: files, escaping, seed groups, bad ids."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from grpo_cli.errors import ConfigError
from grpo_cli.report import build_report
from grpo_cli.report.load import load_targets
from grpo_cli.report.render import fence
from grpo_cli.report.synthetic import write_synthetic_run

EVIL = "<script>alert(1)</script>"


def test_model_text_is_escaped_in_html_and_fenced_in_markdown(tmp_path: Path) -> None:
    samples = [{"step": 0, "prompt": "<b>2+2</b>", "completion": EVIL, "length": 9,
                "truncated": False, "reward": 0.0},
               {"step": 0, "prompt": "p", "completion": "```\n# not a heading\n```",
                "length": 9, "truncated": False, "reward": 1.0}]
    write_synthetic_run(tmp_path, "evil", "healthy", steps=8, samples=samples)
    out = build_report(["evil"], runs_dir=tmp_path)
    page = (out / "report.html").read_text()
    assert EVIL not in page and "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;2+2&lt;/b&gt;" in page
    md = (out / "report.md").read_text()
    assert f"```text\n{EVIL}\n```" in md
    assert "````text\n```\n# not a heading\n```\n````" in md
    # self-contained: figures inline, nothing fetched from the network
    assert "data:image/png;base64," in page
    assert not re.search(r"(src|href)=['\"]https?:", page)
    assert out == tmp_path / "reports" / "evil"


def test_fence_outnumbers_backticks() -> None:
    assert fence("a ````` b").startswith("``````text\n")


def test_report_of_several_runs_groups_seeds(tmp_path: Path) -> None:
    for seed in (0, 1):
        write_synthetic_run(tmp_path, f"h{seed}", "healthy", steps=10, seed=seed)
    write_synthetic_run(tmp_path, "c0", "collapse", steps=10)
    loaded = load_targets(["h0", "h1", "c0"], tmp_path)
    groups = {r.run_id: r.group for r in loaded.runs}
    assert groups["h0"] == groups["h1"] != groups["c0"]
    labels = {r.run_id: r.label for r in loaded.runs}
    assert labels["h0"].endswith("seed=0") and labels["h1"].endswith("seed=1")
    assert "max_len=48" in labels["c0"]
    out = build_report(["h0", "h1", "c0"], out=tmp_path / "cmp", runs_dir=tmp_path)
    names = {p.name for p in out.iterdir()}
    assert {"report.html", "report.md", "length_mean.png", "clip_ratio.png",
            "reward_accuracy.png", "correlation.png", "correct_incorrect.png",
            "run00_heatmap.png", "run02_km.png"} <= names
    page = (out / "report.html").read_text()
    for run_id in ("h0", "h1", "c0"):
        assert run_id in page
    # one diagnosis per arm (the two healthy seeds are one arm), seeds in the collapsed detail
    assert page.count("class='finding") == 2 and "Healthy — 2 of 2 seeds" in page
    assert page.count("<details><summary>Per-seed detail") == 1


@pytest.mark.parametrize("target", ["no-such-run", "../etc", ".hidden", "a/../../b", ""])
def test_bad_ids_are_config_errors(tmp_path: Path, target: str) -> None:
    (tmp_path / "runs").mkdir()
    with pytest.raises(ConfigError) as e:
        build_report([target], runs_dir=tmp_path / "runs")
    assert "\n" not in str(e.value)


def test_a_sweep_id_expands_into_its_arms(tmp_path: Path) -> None:
    import json

    sweep = tmp_path / "sweeps" / "sweep-x"
    (sweep / "arms").mkdir(parents=True)
    arms = []
    for i, pattern in enumerate(("healthy", "collapse")):
        write_synthetic_run(tmp_path, f"sweep-x-{i:03d}", pattern, steps=8)
        arms.append({"index": i, "overrides": [f"p={pattern}"], "run_id": f"sweep-x-{i:03d}",
                     "status": "completed"})
    arms.append({"index": 2, "overrides": ["p=none"], "run_id": "sweep-x-002",
                 "status": "failed"})
    (sweep / "manifest.json").write_text(json.dumps({"sweep_id": "sweep-x", "arms": arms}))
    loaded = load_targets(["sweep-x"], tmp_path)
    assert [r.run_id for r in loaded.runs] == ["sweep-x-000", "sweep-x-001"]
    assert any("arm 2" in n for n in loaded.notes)
    bad = {"sweep_id": "sweep-x", "arms": [{"index": 0, "run_id": "../../etc"}]}
    (sweep / "manifest.json").write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match="invalid run id"):
        load_targets(["sweep-x"], tmp_path)


def test_a_one_step_window_is_named_as_one_step() -> None:
    from grpo_cli.report.style import step_span

    assert step_span(4, 4) == "step 4"
    assert step_span(3, 9) == "steps 3–9"
