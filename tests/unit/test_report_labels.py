"""Run labels come from the config keys that set runs apart (or the run's name), and seeds
group."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from grpo_cli.config.schema import RunConfig
from grpo_cli.report import build_report
from grpo_cli.report.load import RunData, assign_labels, display_name, load_targets
from grpo_cli.report.synthetic import write_synthetic_run
from grpo_cli.telemetry.store import RunStore


def _run(run_id: str, max_len: int, seed: int, drop: str | None = None,
         name: str | None = None, **trainer: object) -> RunData:
    config = asdict(RunConfig())
    config["data"]["max_response_length"], config["seed"] = max_len, seed
    config["trainer"].update(trainer)
    config["name"] = name
    if drop:  # a key an older grpo-cli did not write
        del config["trainer"][drop]
    meta = {"run_id": run_id, "name": name}  # what `grpo run name=...` stores
    return RunData(run_id, "store", None, config, meta, pd.DataFrame())


def test_seeds_group_and_a_key_an_older_version_lacked_is_no_difference() -> None:
    runs = [_run("a", 32, 0, drop="adam_eps"), _run("b", 32, 1, drop="adam_eps"),
            _run("c", 256, 0, drop="adam_eps"), _run("d", 256, 1)]
    assign_labels(runs)
    assert [r.label for r in runs] == ["max_len=32 seed=0", "max_len=32 seed=1",
                                       "max_len=256 seed=0", "max_len=256 seed=1"]
    assert runs[2].group == runs[3].group == "max_len=256"


def test_a_key_set_apart_from_its_default_still_labels() -> None:
    runs = [_run("a", 32, 0, drop="adam_eps"), _run("b", 32, 0, adam_eps=1.0)]
    assign_labels(runs)
    assert [r.label for r in runs] == ["trainer.adam_eps=1e-08", "trainer.adam_eps=1.0"]


def test_a_single_run_is_labelled_by_its_name_and_shown_as_name_and_id() -> None:
    (named,) = runs = [_run("20261201-101010-aaaa0000", 32, 0, name="baseline")]
    assign_labels(runs)
    assert named.label == "baseline"
    assert display_name(named) == "baseline (20261201-101010-aaaa0000)"
    (plain,) = runs = [_run("20261201-101010-bbbb0000", 32, 0)]
    assign_labels(runs)
    assert plain.label == display_name(plain) == "20261201-101010-bbbb0000"


def test_unique_names_label_shared_names_keep_the_config_label_and_show_the_name() -> None:
    runs = [_run("a", 32, 0, name="short cap"), _run("b", 256, 0, name="long cap"),
            _run("c", 512, 0)]
    assign_labels(runs)
    assert [r.label for r in runs] == ["short cap", "long cap", "max_len=512"]
    assert [display_name(r) for r in runs] == ["short cap (a)", "long cap (b)",
                                               "max_len=512 (c)"]
    assert runs[0].group != runs[1].group  # grouping is still by config
    # sweep arms share the sweep's name=: labelled by what differs, the name beside the id
    arms = [_run("s-000", 32, 0, name="caps"), _run("s-001", 256, 0, name="caps")]
    assign_labels(arms)
    assert [r.label for r in arms] == ["max_len=32", "max_len=256"]
    assert display_name(arms[1]) == "max_len=256 (caps, s-001)"
    assert display_name(arms[1], "\n") == "max_len=256\n(caps, s-001)"
    # nothing tells them apart: the fallback is the name and the id, never a bare duplicate
    twins = [_run("t0", 32, 0, name="same"), _run("t1", 32, 0, name="same")]
    assign_labels(twins)
    assert [r.label for r in twins] == ["same (t0)", "same (t1)"]
    assert display_name(twins[0]) == "same (t0)"


def test_the_report_shows_names_in_title_tables_and_headings(tmp_path: Path) -> None:
    write_synthetic_run(tmp_path, "run-a", "healthy", steps=6)
    write_synthetic_run(tmp_path, "run-b", "healthy", steps=6, cap=48)
    RunStore.open(tmp_path, "run-a").update_meta(name="baseline")
    out = build_report(["run-a"], out=tmp_path / "one", runs_dir=tmp_path)
    page, md = (out / "report.html").read_text(), (out / "report.md").read_text()
    assert "<h1>GRPO length report: baseline (run-a)</h1>" in page
    assert md.startswith("# GRPO length report: baseline (run-a)\n")
    assert "<tr><td>baseline (run-a)</td>" in page and "| baseline (run-a) |" in md
    out = build_report(["run-a", "run-b"], out=tmp_path / "two", runs_dir=tmp_path)
    page, md = (out / "report.html").read_text(), (out / "report.md").read_text()
    # both summary tables and the comparison's per-arm table
    assert len(re.findall(r"<tr><td>baseline \(run-a\)</td>", page)) == 3
    assert len(re.findall(r"<tr><td>max_len=48 \(run-b\)</td>", page)) == 3
    assert "<h3>baseline (run-a)</h3>" in page and "### baseline (run-a)" in md
    assert "| max_len=48 (run-b) |" in md


def test_groups_differing_beyond_three_keys_keep_their_seeds_together() -> None:
    """Arms that differ in more keys than a label shows (a length-methods sweep: one group
    option sets several keys) still group by seed; the label spells what tells them apart."""
    def method(run_id: str, seed: int, decay: float) -> RunData:  # 5 keys off the defaults
        return _run(run_id, 32, seed, grad_clip=0.5, lr=1e-3, max_bad_steps=3,
                    warmup_steps=1, weight_decay=decay)

    runs = [method("a", 0, 0.1), method("b", 1, 0.1), method("c", 0, 0.2), method("d", 1, 0.2),
            _run("e", 32, 0)]
    assign_labels(runs)  # the first three differing keys are the same for a-d
    assert runs[0].group == runs[1].group != runs[2].group == runs[3].group
    assert len({r.group for r in runs}) == 3
    assert runs[0].label.endswith("seed=0") and runs[1].label.endswith("seed=1")
    assert "trainer.weight_decay=0.1" in runs[0].label
    assert "trainer.weight_decay=0.2" in runs[2].label


def test_sweep_arms_are_labelled_by_their_overrides() -> None:
    runs = [_run("a", 32, 0, lr=1e-3, warmup_steps=2, weight_decay=0.1, grad_clip=0.5),
            _run("b", 32, 1, lr=1e-3, warmup_steps=2, weight_decay=0.1, grad_clip=0.5),
            _run("c", 64, 0)]
    for run, overrides in zip(runs, (["seed=0", "length=fancy"], ["seed=1", "length=fancy"],
                                     ["seed=0", "data.max_response_length=64"]), strict=True):
        run.overrides = overrides
    assign_labels(runs)
    assert [r.label for r in runs] == ["length=fancy seed=0", "length=fancy seed=1",
                                       "max_len=64"]


def test_a_sweep_over_seeds_alone_is_labelled_by_the_overrides_its_arms_shared() -> None:
    """A remedy sweep varies only the seed; reported beside another sweep, its arms are named
    by its fixed overrides, not by the first three config keys that differ (which cut off
    what matters: `length.overlong_buffer` sorts after `algorithm.*`)."""
    plain = [_run("p0", 20, 0), _run("p1", 20, 1)]
    remedy = [_run("r0", 20, 0, lr=1e-3, warmup_steps=2, weight_decay=0.1, grad_clip=0.5),
              _run("r1", 20, 1, lr=1e-3, warmup_steps=2, weight_decay=0.1, grad_clip=0.5)]
    for run in plain:
        run.overrides = [f"seed={run.seed}", "data.max_response_length=20"]
    for run in remedy:
        run.overrides = [f"seed={run.seed}"]
        run.common_overrides = ["data.max_response_length=20", "length=fancy"]
    assign_labels(plain + remedy)
    assert [r.label for r in plain + remedy] == [
        "max_len=20 seed=0", "max_len=20 seed=1", "max_len=20 length=fancy seed=0",
        "max_len=20 length=fancy seed=1"]
    # one seeds-only sweep on its own: nothing differs but the seed, one arm
    alone = [_run("s0", 20, 0), _run("s1", 20, 1)]
    for run in alone:
        run.overrides, run.common_overrides = [f"seed={run.seed}"], ["max_len=20"]
    assign_labels(alone)
    assert [r.label for r in alone] == ["seed=0", "seed=1"]


def test_two_seeds_only_sweeps_load_with_their_shared_overrides(tmp_path: Path) -> None:
    """From the manifests: `config=` and `hydra/` entries are not part of an arm's name."""
    for sweep, cap, extra in (("sweep-a", 48, []), ("sweep-b", 64, ["length=overlong"])):
        (tmp_path / "sweeps" / sweep).mkdir(parents=True)
        arms = []
        for seed in (0, 1):
            rid = f"{sweep}-{seed:03d}"
            write_synthetic_run(tmp_path, rid, "healthy", steps=4, prompts=2, n=2, cap=cap,
                                seed=seed)
            arms.append({"index": seed, "overrides": [f"seed={seed}"], "run_id": rid,
                         "status": "completed"})
        (tmp_path / "sweeps" / sweep / "manifest.json").write_text(json.dumps({
            "sweep_id": sweep, "arms": arms, "common_overrides": [
                "config=conf/experiment/x.yaml", f"data.max_response_length={cap}", *extra,
                "hydra/launcher=basic"]}))
    loaded = load_targets(["sweep-a", "sweep-b"], runs_dir=tmp_path)
    assert [r.label for r in loaded.runs] == ["max_len=48 seed=0", "max_len=48 seed=1",
                                              "max_len=64 length=overlong seed=0",
                                              "max_len=64 length=overlong seed=1"]
