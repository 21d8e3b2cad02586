"""The metric catalog (grpo_cli/telemetry/catalog.py) without a run: its lookups, the
Markdown the docs hook renders from it, and the keys the telemetry functions build from
synthetic batches. tests/integration/test_metric_catalog.py checks it against real runs."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from grpo_cli.telemetry import catalog
from grpo_cli.telemetry.catalog import METRICS, PLACEHOLDERS, PREFIX_ORDER, markdown_table, match
from grpo_cli.telemetry.histograms import length_histograms
from grpo_cli.telemetry.length_metrics import length_control_metrics, step_length_metrics


def test_the_docs_hook_imports_it_without_the_training_stack() -> None:
    code = ("import sys, grpo_cli.telemetry.catalog as c; c.markdown_table(); "
            "heavy = {'torch', 'numpy', 'deepspeed', 'transformers', 'wandb'} & set(sys.modules);"
            "print(sorted(heavy))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_entries_are_unique_and_well_formed() -> None:
    names = Counter(m.name for m in METRICS)
    assert [n for n, c in names.items() if c > 1] == []
    for m in METRICS:
        assert set(re.findall(r"\{(\w+)\}", m.name)) <= set(PLACEHOLDERS), m.name
        assert m.meaning.endswith(".") and not m.meaning[0].islower(), m.name
        assert not re.search(r"\.\s+[A-Z]", m.meaning), f"{m.name}: one sentence, please"
        assert m.when.strip(), m.name
        assert m.matches(m.name) == (not m.is_pattern), m.name
    with pytest.raises(AttributeError):
        METRICS[0].name = "x"  # type: ignore[misc]


@pytest.mark.parametrize(("key", "name"), [
    ("length/mean", "length/mean"),
    ("length/p50", "length/p{q}"),
    ("length/p99", "length/p{q}"),
    ("val/length/p10", "val/length/p{q}"),
    ("reward/truncated_mean", "reward/truncated_mean"),  # an exact name beats the pattern
    ("reward/accuracy_mean", "reward/{component}_mean"),
    ("reward/stop_penalty_mean", "reward/{component}_mean"),
    ("val/length/hist_correct", "val/length/hist_correct"),
    ("step", "step"),
])
def test_match_maps_a_logged_key_to_its_entry(key: str, name: str) -> None:
    entry = match(key)
    assert entry is not None and entry.name == name


@pytest.mark.parametrize("key", ["length/p42", "length/p", "length/mean/x", "xlength/mean",
                                 "val/reward/accuracy_mean", "val/perf/step_s",
                                 "reward/_mean/x", "nope", ""])
def test_match_refuses_unknown_keys(key: str) -> None:
    assert match(key) is None


def _table_rows(text: str) -> list[tuple[str, str]]:
    """(section heading, metric name) of every table row of the rendered Markdown."""
    rows, section = [], ""
    for line in text.splitlines():
        if line.startswith("#"):
            section = line
        elif line.startswith("| `"):
            rows.append((section, line.split("`")[1]))
    return rows


def test_markdown_table_renders_every_entry_exactly_once_under_its_prefix() -> None:
    text = markdown_table()
    rows = _table_rows(text)
    assert Counter(name for _, name in rows) == Counter(m.name for m in METRICS)
    by_name = {m.name: m for m in METRICS}
    for section, name in rows:
        prefix = by_name[name].prefix
        assert section == (f"### `{prefix}`" if prefix else "### Without a prefix"), name
    headings = [line for line in text.splitlines() if line.startswith("#")]
    assert len(headings) == len(set(headings)) == len(PREFIX_ORDER)
    # every row has the header's three cells ("\|" is an escaped pipe inside a cell)
    for line in text.splitlines():
        if line.startswith("|"):
            assert len(re.split(r"(?<!\\)\|", line)) == 5, line


def test_markdown_table_follows_the_order_asked_and_keeps_the_rest() -> None:
    text = markdown_table(prefix_order=("val/", "perf/"), heading_level=4)
    headings = [line for line in text.splitlines() if line.startswith("#")]
    assert headings[:2] == ["#### `val/`", "#### `perf/`"]
    assert len(headings) == len(PREFIX_ORDER)
    assert Counter(n for _, n in _table_rows(text)) == Counter(m.name for m in METRICS)
    with pytest.raises(ValueError, match="lenght/"):
        markdown_table(prefix_order=("lenght/",))


def test_prefix_order_lists_every_prefix() -> None:
    assert set(PREFIX_ORDER) == {m.prefix for m in METRICS}


def _unmatched(keys: object) -> list[str]:
    return sorted(k for k in keys if match(k) is None)  # type: ignore[attr-defined]


def test_every_key_the_telemetry_functions_build_is_listed() -> None:
    """Synthetic batches that make every optional key appear (no run needed): what the loop's
    metrics come from, so a key added there without a catalog entry fails here first."""
    rng = np.random.default_rng(0)
    n, g = 16, 4
    lengths = rng.integers(1, 33, n)
    truncated = lengths == 32
    truncated[:4] = True  # a whole group cut: dynamic/dropped_truncated_frac
    rewards = rng.normal(size=n)
    rewards[:4] = 0.0
    correct = (rng.random(n) > 0.5).astype(float)
    groups = np.arange(n) // g
    cols = {"response_length": lengths, "truncated": truncated, "reward": rewards,
            "budget": rng.integers(8, 25, n), "gfpo_kept": rng.random(n) > 0.5,
            "round": groups // 2, "informative": groups > 0, "trained": groups > 1,
            "logratio_sum": rng.normal(size=n), "is_weight_sum": lengths * 0.9,
            "is_masked_tokens": np.where(groups == 3, lengths, 1)}
    keys = set(step_length_metrics(lengths, truncated, rewards, groups, correct, 32))
    keys |= set(length_control_metrics(cols, g, 4))
    keys |= set(length_histograms(lengths, correct, 32))
    val = {f"val/{k}" for k in step_length_metrics(lengths, truncated, rewards, groups,
                                                   correct, 64)}
    val |= set(length_histograms(lengths, correct, 64, "val/"))
    assert {"dynamic/dropped_truncated_frac", "mismatch/masked_frac_truncated",
            "budget/length_spearman", "length/hist_incorrect"} <= keys
    assert _unmatched(keys | val) == []
    # and the other way: every entry of what these functions build is built
    produced = keys | val
    dead = [m.name for m in METRICS if _built_by_telemetry(m.name)
            and not any(m.matches(k) for k in produced)]
    assert dead == [], "listed, but the telemetry functions never build it"


def _built_by_telemetry(name: str) -> bool:
    """Entries that step_length_metrics, length_control_metrics or length_histograms make
    (the rest come from the loop and the update: tests/integration/test_metric_catalog.py)."""
    base = name.removeprefix("val/")
    return base.startswith(("length/", "corr/", "budget/", "gfpo/", "dynamic/", "mismatch/")) \
        or base in ("max_len", "reward/mean", "reward/std", "reward/truncated_mean")


def test_the_module_docstring_names_the_real_test() -> None:
    assert "tests/integration/test_metric_catalog.py" in (catalog.__doc__ or "")


def test_section_notes_belong_to_real_prefixes() -> None:
    assert set(catalog.SECTIONS) <= {m.prefix for m in METRICS}
    text = markdown_table()
    for note in catalog.SECTIONS.values():
        assert text.count(note) == 1
