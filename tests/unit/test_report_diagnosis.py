"""The diagnosis finds the length pattern planted in a synthetic run store (real RunStore)."""

from __future__ import annotations

from pathlib import Path

import pytest

from grpo_cli.report import analyse_run
from grpo_cli.report.diagnosis import MIN_TREND_STEPS, diagnose
from grpo_cli.report.load import load_store_run
from grpo_cli.report.synthetic import write_synthetic_run


def kinds_of(tmp_path: Path, pattern: str, **kw) -> tuple[list[str], list]:
    path = write_synthetic_run(tmp_path, f"{pattern}-run", pattern, **kw)
    view = analyse_run(load_store_run(path))
    return [f.kind for f in view.findings], view.findings


def test_collapse_under_the_cap_is_truncation_pressure(tmp_path: Path) -> None:
    kinds, findings = kinds_of(tmp_path, "collapse")
    assert "truncation-pressure" in kinds
    (f,) = [f for f in findings if f.kind == "truncation-pressure"]
    # the sentence carries the numbers and the remedies are config keys users can type
    assert "length fell" in f.message and "% of completions were truncated" in f.message
    assert "raise max_len or mask truncated" in f.message
    overrides = [r.override for r in f.remedies]
    assert any(o.startswith("max_len=") for o in overrides)
    assert "algorithm.mask_truncated=true algorithm.mask_truncated_in_adv=true" in overrides
    assert any(o.startswith("length.overlong_buffer=") for o in overrides)
    assert any(o.startswith("length.schedule=") for o in overrides)


def test_healthy_run_is_only_healthy(tmp_path: Path) -> None:
    kinds, findings = kinds_of(tmp_path, "healthy")
    assert kinds == ["healthy"]
    assert "tokens" in findings[0].message and "%" in findings[0].message


def test_length_rising_to_the_cap_is_an_explosion(tmp_path: Path) -> None:
    kinds, findings = kinds_of(tmp_path, "explosion")
    assert "length-explosion" in kinds
    assert "truncation-pressure" not in kinds
    (f,) = [f for f in findings if f.kind == "length-explosion"]
    assert any(r.override.startswith("length.overlong_buffer=") for r in f.remedies)


def test_longer_wrong_answers_under_seq_mean_token_mean_is_the_loss_bias(tmp_path: Path) -> None:
    kinds, findings = kinds_of(tmp_path, "loss_bias")
    assert "loss-aggregation-bias" in kinds
    (f,) = [f for f in findings if f.kind == "loss-aggregation-bias"]
    assert "seq-mean-token-mean" in f.message
    assert {r.override for r in f.remedies} == {
        "algorithm.loss_agg_mode=token-mean", "algorithm.loss_agg_mode=seq-mean-token-sum-norm"}


def test_same_pattern_under_token_mean_is_not_blamed_on_the_loss(tmp_path: Path) -> None:
    kinds, _ = kinds_of(tmp_path, "loss_bias", loss_agg_mode="token-mean")
    assert "loss-aggregation-bias" not in kinds


@pytest.mark.parametrize("pattern", ["collapse", "healthy"])
def test_findings_are_stable_across_seeds(tmp_path: Path, pattern: str) -> None:
    for seed in (1, 2):
        kinds, _ = kinds_of(tmp_path / str(seed), pattern, seed=seed)
        assert ("truncation-pressure" in kinds) == (pattern == "collapse")
        assert (kinds == ["healthy"]) == (pattern == "healthy")


def test_a_short_run_gets_no_trend_verdict(tmp_path: Path) -> None:
    path = write_synthetic_run(tmp_path, "short", "collapse", steps=MIN_TREND_STEPS - 1)
    view = analyse_run(load_store_run(path))
    assert [f.kind for f in view.findings] == ["too-few-steps"]
    assert diagnose(view.summary)[0].kind == "too-few-steps"


def _healthy_summary(tmp_path: Path):
    path = write_synthetic_run(tmp_path, "base", "healthy", steps=20)
    return analyse_run(load_store_run(path)).summary


def test_coupling_turning_negative_is_reported_with_its_numbers(tmp_path: Path) -> None:
    from dataclasses import replace

    s = replace(_healthy_summary(tmp_path), corr_within_early=0.1, corr_within_late=-0.45)
    findings = diagnose(s)
    assert [f.kind for f in findings] == ["negative-coupling"]
    assert "+0.10 to -0.45" in findings[0].message
    # already negative from the start: a trait of the task, not a turn
    assert diagnose(replace(s, corr_within_early=-0.4))[0].kind == "healthy"


def test_truncation_pressure_needs_truncated_completions_to_earn_less(tmp_path: Path) -> None:
    """The collapse's length fall and clip ratio alone are not truncation pressure: the
    truncated completions must also earn less than the rest, by more than the threshold."""
    from dataclasses import replace

    from grpo_cli.report.diagnosis import TRUNC_REWARD_GAP_STD

    path = write_synthetic_run(tmp_path, "collapse-run", "collapse")
    s = analyse_run(load_store_run(path)).summary
    assert "truncation-pressure" in [f.kind for f in diagnose(s)]
    threshold = TRUNC_REWARD_GAP_STD * s.reward_std
    for gap, expected in ((0.0, False), (-0.3, False), (0.9 * threshold, False),
                          (1.1 * threshold, True)):
        t = replace(s, reward_truncated=s.reward_terminated - gap)
        assert ("truncation-pressure" in [f.kind for f in diagnose(t)]) == expected, gap


def test_a_binding_cap_without_a_trend_is_an_info_finding(tmp_path: Path) -> None:
    from dataclasses import replace

    s = replace(_healthy_summary(tmp_path), clip_late=0.3)
    (f,) = diagnose(s)
    assert f.kind == "cap-binding" and f.severity == "info" and "30%" in f.message
