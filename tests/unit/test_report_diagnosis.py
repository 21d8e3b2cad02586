"""The diagnosis finds the length pattern planted in a synthetic run store (real RunStore)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from grpo_cli.report import analyse_run
from grpo_cli.report.diagnosis import (
    BETWEEN_FALL_POINTS,
    BETWEEN_FALL_RATIO,
    COUPLING_DROP,
    COUPLING_LENGTH_FALL_PCT,
    COUPLING_NEGATIVE,
    END_ENTROPY_FALL_PCT,
    END_ENTROPY_MARGIN_PCT,
    LOSS_BIAS_GAP_OF_LENGTH,
    LOSS_BIAS_GAP_TOKENS,
    LOSS_BIAS_RISE_PCT,
    MIN_TREND_STEPS,
    TAIL_MAX_OVER_MEDIAN,
    TAIL_SHARE,
    arm_findings,
    diagnose,
    gap_growth,
)
from grpo_cli.report.load import load_store_run
from grpo_cli.report.summary import RunSummary
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
    base = _healthy_summary(tmp_path)
    s = replace(base, corr_within_early=0.1, corr_within_late=-0.45, len_change_pct=-30.0,
                len_final=0.7 * base.len_initial)
    findings = diagnose(s)
    assert [f.kind for f in findings] == ["negative-coupling"]  # it explains the drift
    assert "+0.10 to -0.45" in findings[0].message
    # already negative from the start: a trait of the task, not a turn
    assert "negative-coupling" not in [f.kind for f in diagnose(replace(s, corr_within_early=-0.4))]


def test_truncation_pressure_needs_truncated_completions_to_earn_less(tmp_path: Path) -> None:
    """The collapse's length fall and clip ratio alone are not truncation pressure: the
    truncated completions must also earn less than the rest, by more than the threshold."""
    from grpo_cli.report.diagnosis import TRUNC_REWARD_GAP_STD

    path = write_synthetic_run(tmp_path, "collapse-run", "collapse")
    s = analyse_run(load_store_run(path)).summary
    assert "truncation-pressure" in [f.kind for f in diagnose(s)]
    threshold = TRUNC_REWARD_GAP_STD * s.reward_std
    for gap, expected in ((0.0, False), (-0.3, False), (0.9 * threshold, False),
                          (1.1 * threshold, True)):
        t = replace(s, reward_truncated=s.reward_terminated - gap)
        assert ("truncation-pressure" in [f.kind for f in diagnose(t)]) == expected, gap


def test_a_fall_of_the_natural_length_under_a_tight_cap_is_truncation_pressure(
        tmp_path: Path) -> None:
    """SmolLM2 at cap 20 (sweep-20261206-124528-3e458b6e): the capped batch length barely
    moves, as the finished answers were short already, while the probe's natural length falls
    (seed 0: -3% batch, 23.25 -> 17.5 probe; seed 2: -9% probe, which stays below the rule)."""
    from grpo_cli.report.diagnosis import LENGTH_FALL_PCT

    path = write_synthetic_run(tmp_path, "collapse-run", "collapse")
    base = analyse_run(load_store_run(path)).summary
    seed0 = replace(base, len_initial=18.9, len_final=18.3, len_change_pct=-3.0,
                    clip_early=0.625, clip_mean=0.2, clip_late=0.08, natural_early=23.25,
                    natural_late=17.5, reward_truncated=0.0, reward_terminated=0.11,
                    reward_std=0.18)
    (f,) = [f for f in diagnose(seed0) if f.kind == "truncation-pressure"]
    assert "natural length (the probe at a generous cap) fell 25%" in f.message
    assert "the capped length moved -3%" in f.message
    kinds = [f.kind for f in diagnose(replace(seed0, natural_early=24.25, natural_late=22.06))]
    assert "truncation-pressure" not in kinds
    # just below / above the threshold, and no probe at all
    for fall, expected in ((LENGTH_FALL_PCT - 0.5, False), (LENGTH_FALL_PCT + 0.5, True)):
        t = replace(seed0, natural_late=23.25 * (1 - fall / 100))
        assert ("truncation-pressure" in [f.kind for f in diagnose(t)]) == expected, fall
    no_probe = replace(seed0, natural_early=math.nan, natural_late=math.nan)
    assert "truncation-pressure" not in [f.kind for f in diagnose(no_probe)]
    # the probe's fall still needs the cap to bite and truncated answers to earn less
    assert "truncation-pressure" not in [f.kind for f in diagnose(
        replace(seed0, clip_early=0.1, clip_mean=0.1))]
    assert "truncation-pressure" not in [f.kind for f in diagnose(
        replace(seed0, reward_terminated=0.0))]


def test_a_binding_cap_without_a_trend_is_an_info_finding(tmp_path: Path) -> None:
    s = replace(_healthy_summary(tmp_path), clip_late=0.3)
    (f,) = diagnose(s)
    assert f.kind == "cap-binding" and f.severity == "info" and "30%" in f.message


# --- effect sizes: the quick-start's control stays clean --------------------------------------
#
# Window numbers of `grpo sweep sweeps/toy_max_len.yaml seed=0,1,2` (60 steps; sweep
# 20261206-065909), per seed, first / last 10 steps (`--window 10`) and the default 10% (6).
# The cap-160 arm is the control: nothing truncated, length holds, reward rises. Its wrong
# answers do grow longer than its right ones (gap +12.7..+21.8 tokens) and its within-group
# coupling turns negative (-0.10..-0.29), which fired loss-aggregation bias in every seed and
# negative coupling in seed 0 before these rules asked for an effect that matters.

_CONTROL = {  # (seed, window) -> the numbers that differ between seeds
    (0, 10): dict(len_initial=47.5, len_final=44.92, reward_early=0.62, reward_late=0.74,
                  corr_within_early=0.24, corr_within_late=-0.26, correct_len_early=40.35,
                  correct_len_late=36.72, incorrect_len_early=59.51, incorrect_len_late=68.55),
    (1, 10): dict(len_initial=40.64, len_final=46.69, reward_early=0.64, reward_late=0.71,
                  corr_within_early=0.33, corr_within_late=-0.17, correct_len_early=34.27,
                  correct_len_late=36.53, incorrect_len_early=52.53, incorrect_len_late=70.65),
    (2, 10): dict(len_initial=46.89, len_final=45.99, reward_early=0.61, reward_late=0.74,
                  corr_within_early=0.24, corr_within_late=-0.10, correct_len_early=40.73,
                  correct_len_late=38.14, incorrect_len_early=57.47, incorrect_len_late=67.69),
    (0, 6): dict(len_initial=49.03, len_final=44.21, reward_early=0.57, reward_late=0.73,
                 corr_within_early=0.26, corr_within_late=-0.29, correct_len_early=42.26,
                 correct_len_late=35.16, incorrect_len_early=57.82, incorrect_len_late=68.33),
    (1, 6): dict(len_initial=41.62, len_final=48.71, reward_early=0.63, reward_late=0.67,
                 corr_within_early=0.36, corr_within_late=-0.11, correct_len_early=35.53,
                 correct_len_late=36.74, incorrect_len_early=52.27, incorrect_len_late=72.15),
    (2, 6): dict(len_initial=46.97, len_final=44.51, reward_early=0.59, reward_late=0.73,
                 corr_within_early=0.27, corr_within_late=-0.11, correct_len_early=43.04,
                 correct_len_late=35.98, incorrect_len_early=52.71, incorrect_len_late=67.41),
}
_CAP32 = {  # the failing arm, same sweep, --window 10
    0: dict(len_initial=23.9, len_final=15.46, clip_early=0.54, clip_late=0.17, clip_mean=0.41,
            reward_early=0.31, reward_late=0.44, corr_within_early=-0.58, corr_within_late=-0.01,
            correct_len_early=15.57, correct_len_late=17.31, incorrect_len_early=27.51,
            incorrect_len_late=13.91, reward_truncated=0.0, reward_terminated=0.61),
    1: dict(len_initial=23.01, len_final=12.97, clip_early=0.46, clip_late=0.13, clip_mean=0.36,
            reward_early=0.39, reward_late=0.39, corr_within_early=-0.40, corr_within_late=-0.09,
            correct_len_early=15.5, correct_len_late=13.54, incorrect_len_early=27.97,
            incorrect_len_late=12.36, reward_truncated=0.0, reward_terminated=0.62),
    2: dict(len_initial=23.8, len_final=10.93, clip_early=0.53, clip_late=0.06, clip_mean=0.34,
            reward_early=0.27, reward_late=0.42, corr_within_early=-0.41, corr_within_late=-0.04,
            correct_len_early=15.54, correct_len_late=15.33, incorrect_len_early=26.89,
            incorrect_len_late=7.55, reward_truncated=0.04, reward_terminated=0.51),
}


def summary(**numbers: float) -> RunSummary:
    """A 60-step seq-mean-token-mean run at cap 160 with the control's seed-0 numbers (window
    10), ``numbers`` replacing any of them; the length change follows the lengths."""
    base: dict[str, Any] = dict(
        label="r", run_id="r", steps=60, window=10, first_step=0, last_step=59,
        clip_early=0.0, clip_late=0.0, clip_mean=0.0, acc_early=math.nan, acc_late=math.nan,
        corr_batch_early=-0.28, corr_batch_late=-0.52, reward_truncated=math.nan,
        reward_terminated=math.nan, reward_std=0.45, cap_early=160.0, cap_late=160.0,
        wall_s=60.0, loss_agg_mode="seq-mean-token-mean", status="completed",
        **_CONTROL[(0, 10)])
    base.update(numbers)
    base["len_change_pct"] = 100.0 * (base["len_final"] / base["len_initial"] - 1.0)
    return RunSummary(**base)


def kinds(s: RunSummary) -> list[str]:
    return [f.kind for f in diagnose(s)]


@pytest.mark.parametrize("seed, w", sorted(_CONTROL))
def test_the_quick_start_control_is_healthy_in_every_seed(seed: int, w: int) -> None:
    s = summary(window=w, **_CONTROL[(seed, w)])
    assert gap_growth(s) > 10  # wrong answers did pull away: the rule sees it and says why not
    (f,) = diagnose(s)
    assert f.kind == "healthy", f.message
    assert any("gap grew" in e and "needs ≥" in e for e in f.evidence)


def test_the_quick_start_arms_as_an_arm() -> None:
    """Over three seeds the control is healthy and the cap-32 arm has truncation pressure
    with its remedies (the per-seed numbers are the sweep's; the pooled diagnosis reads the
    seed means, as analyse_arm does)."""
    def mean_of(rows: list[dict[str, float]]) -> dict[str, float]:
        return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}

    control = [summary(**_CONTROL[(seed, 10)]) for seed in range(3)]
    got = arm_findings([diagnose(s) for s in control],
                       diagnose(summary(**mean_of([_CONTROL[(i, 10)] for i in range(3)]))),
                       [0, 1, 2])
    assert [(f.kind, f.support) for f in got] == [("healthy", "3 of 3 seeds")]

    capped = [summary(cap_early=32.0, cap_late=32.0, reward_std=0.47, **_CAP32[i])
              for i in range(3)]
    pooled = diagnose(summary(cap_early=32.0, cap_late=32.0, reward_std=0.47,
                              **mean_of([_CAP32[i] for i in range(3)])))
    got = arm_findings([diagnose(s) for s in capped], pooled, [0, 1, 2])
    assert [(f.kind, f.support) for f in got] == [("truncation-pressure", "3 of 3 seeds")]
    assert got[0].severity == "warning"
    assert "max_len=64" in [r.override for r in got[0].remedies]
    assert "threshold 15%" in got[0].message  # the length fall and the truncated share


def _with_gap(s: RunSummary, gap: float) -> RunSummary:
    """``s`` with the incorrect answers' late length set so the gap grows by ``gap`` tokens."""
    late = s.incorrect_len_early + (s.correct_len_late - s.correct_len_early) + gap
    return replace(s, incorrect_len_late=late)


def test_loss_bias_needs_the_gap_to_grow_by_a_share_of_the_length() -> None:
    s = summary()  # early mean length 47.5: the relative threshold (28.5 tokens) binds
    need = LOSS_BIAS_GAP_OF_LENGTH * s.len_initial
    assert need > LOSS_BIAS_GAP_TOKENS
    assert "loss-aggregation-bias" not in kinds(_with_gap(s, 0.97 * need))
    over = _with_gap(s, 1.03 * need)
    assert over.incorrect_change_pct >= LOSS_BIAS_RISE_PCT
    (f,) = [f for f in diagnose(over) if f.kind == "loss-aggregation-bias"]
    assert f.severity == "warning"
    # the sentence states the effect and the threshold it crossed
    assert f"gap grew {1.03 * need:.1f} tokens" in f.message
    assert (f"threshold: {need:.1f} tokens, the larger of {LOSS_BIAS_GAP_TOKENS:.0f} and "
            f"{LOSS_BIAS_GAP_OF_LENGTH:.0%} of the 47.5-token early mean length") in f.message
    assert f"threshold {LOSS_BIAS_RISE_PCT:.0f}%" in f.message


def test_loss_bias_needs_a_gap_of_some_tokens_on_short_answers() -> None:
    # 12-token answers: 60% is 7.2 tokens, the floor of 10 binds
    s = summary(len_initial=12.0, len_final=12.0, correct_len_early=10.0, correct_len_late=10.0,
                incorrect_len_early=14.0, incorrect_len_late=14.0)
    assert LOSS_BIAS_GAP_OF_LENGTH * s.len_initial < LOSS_BIAS_GAP_TOKENS
    assert "loss-aggregation-bias" not in kinds(_with_gap(s, 0.95 * LOSS_BIAS_GAP_TOKENS))
    over = _with_gap(s, 1.05 * LOSS_BIAS_GAP_TOKENS)
    assert "loss-aggregation-bias" in kinds(over)
    # the same growth under a loss without the 1/|o| weight is not blamed on the loss
    assert "loss-aggregation-bias" not in kinds(replace(over, loss_agg_mode="token-mean"))


def test_loss_bias_needs_the_wrong_answers_themselves_to_lengthen() -> None:
    # the gap grows 30 tokens only because correct answers shortened: not the 1/|o| bias
    s = summary(correct_len_early=40.0, correct_len_late=10.0, incorrect_len_early=60.0,
                incorrect_len_late=60.0 * (1 + 0.9 * LOSS_BIAS_RISE_PCT / 100))
    assert gap_growth(s) >= LOSS_BIAS_GAP_OF_LENGTH * s.len_initial
    assert "loss-aggregation-bias" not in kinds(s)


def test_coupling_needs_length_to_fall() -> None:
    """The control's seed 0 turns from +0.24 to -0.26 while length holds and reward rises: no
    finding. The same turn with length falling past the noise band is one."""
    s = summary()
    assert s.corr_within_late <= COUPLING_NEGATIVE
    assert s.corr_within_early - s.corr_within_late >= COUPLING_DROP
    assert kinds(s) == ["healthy"]
    fall = COUPLING_LENGTH_FALL_PCT / 100
    assert "negative-coupling" not in kinds(
        summary(len_final=s.len_initial * (1 - 0.95 * fall)))
    over = summary(len_final=s.len_initial * (1 - 1.05 * fall))
    (f,) = diagnose(over)
    assert f.kind == "negative-coupling" and f.severity == "warning"
    assert "+0.24 to -0.26 (threshold: ≤ -0.2 late after a drop of ≥ 0.2)" in f.message
    assert (f"length fell {1.05 * COUPLING_LENGTH_FALL_PCT:.0f}% (47.5 → "
            f"{over.len_final:.1f} tokens; threshold {COUPLING_LENGTH_FALL_PCT:.0f}%)"
            ) in f.message
    assert "not the cap" in f.message  # nothing truncated


# --- the diagnostics beyond length: entropy by position, variance split, the rollout tail ---
#
# The same sweep run again once those columns were recorded (sweep 20261206-095844: the same
# lengths to the token), default window (6 steps), per seed.
_DIAG_CONTROL = {  # cap 160: nothing truncated, so no entropy of truncated completions
    0: dict(between_early=0.4927, between_late=0.8948, ent_finished_early=0.11,
            ent_finished_late=0.03433, ent_first_early=0.192, ent_first_late=0.04701,
            ent_last_early=0.03372, ent_last_late=0.03661, tail_late=0.1191,
            max_over_median_late=2.626),
    1: dict(between_early=0.5093, between_late=0.8893, ent_finished_early=0.1186,
            ent_finished_late=0.03513, ent_first_early=0.2151, ent_first_late=0.04744,
            ent_last_early=0.03955, ent_last_late=0.03633, tail_late=0.1727,
            max_over_median_late=2.592),
    2: dict(between_early=0.4396, between_late=0.903, ent_finished_early=0.1147,
            ent_finished_late=0.02855, ent_first_early=0.2009, ent_first_late=0.03963,
            ent_last_early=0.03617, ent_last_late=0.02881, tail_late=0.17,
            max_over_median_late=2.584),
}
_DIAG_CAP32 = {
    0: dict(between_early=0.3042, between_late=0.4724, ent_trunc_early=0.09039,
            ent_trunc_late=0.0753, ent_finished_early=0.2464, ent_finished_late=0.2164,
            ent_first_early=0.2495, ent_first_late=0.1861, ent_last_early=0.03664,
            ent_last_late=0.01873, tail_late=0.04394, max_over_median_late=3.111),
    1: dict(between_early=0.4086, between_late=0.4556, ent_trunc_early=0.1214,
            ent_trunc_late=0.0729, ent_finished_early=0.1712, ent_finished_late=0.2431,
            ent_first_early=0.2548, ent_first_late=0.1958, ent_last_early=0.05324,
            ent_last_late=0.007288, tail_late=0.1557, max_over_median_late=5.778),
    2: dict(between_early=0.2292, between_late=0.7718, ent_trunc_early=0.1127,
            ent_trunc_late=0.06511, ent_finished_early=0.2507, ent_finished_late=0.1496,
            ent_first_early=0.2698, ent_first_late=0.1279, ent_last_early=0.05749,
            ent_last_late=0.005308, tail_late=0.08517, max_over_median_late=5.511),
}


def _cap32(seed: int, **numbers: float) -> RunSummary:
    base = dict(cap_early=32.0, cap_late=32.0, reward_std=0.47, **_CAP32[seed])
    return summary(**(base | _DIAG_CAP32[seed] | numbers))


@pytest.mark.parametrize("seed", range(3))
def test_the_new_diagnostics_leave_the_control_healthy(seed: int) -> None:
    """The control's entropy falls 76-80% over the first quarter (a sure opening), its
    between-prompt share rises, its tail is 12-17%: none of it is a finding."""
    s = summary(window=6, **_CONTROL[(seed, 6)], **_DIAG_CONTROL[seed])
    assert kinds(s) == ["healthy"]


def test_entropy_collapses_at_the_end_first_in_two_of_three_capped_seeds() -> None:
    got = [[f for f in diagnose(_cap32(i)) if f.kind == "end-entropy-collapse"]
           for i in range(3)]
    assert [len(f) for f in got] == [0, 1, 1]  # seed 0: the last quarter fell 49%
    (f,) = got[1]
    assert f.severity == "info"
    assert ("over the last quarter of each completion fell 86% (0.053 → 0.007 nats; "
            "threshold 50%) while the first quarter changed -23%") in f.message
    assert "truncated completions' entropy changed -40%, finished ones' +42%" in f.message
    assert "max_len=64" in [r.override for r in f.remedies]  # 36% truncated: the cap's doing
    pooled = diagnose(_cap32(0, **{k: sum(_DIAG_CAP32[i][k] for i in range(3)) / 3
                                   for k in _DIAG_CAP32[0]}))
    arm = arm_findings([diagnose(_cap32(i)) for i in range(3)], pooled, [0, 1, 2])
    assert [(f.kind, f.support) for f in arm] == [
        ("truncation-pressure", "3 of 3 seeds"), ("end-entropy-collapse", "2 of 3 seeds")]


def _ends(first_pct: float, last_pct: float) -> RunSummary:
    return summary(ent_first_early=0.2, ent_first_late=0.2 * (1 + first_pct / 100),
                   ent_last_early=0.1, ent_last_late=0.1 * (1 + last_pct / 100))


def test_end_entropy_needs_a_large_fall_and_more_than_the_opening() -> None:
    fall, margin = END_ENTROPY_FALL_PCT, END_ENTROPY_MARGIN_PCT
    assert "end-entropy-collapse" in kinds(_ends(0.0, -1.02 * fall))
    assert "end-entropy-collapse" not in kinds(_ends(0.0, -0.98 * fall))
    last = -1.2 * fall  # a large fall, but the opening fell almost as much: sharpening
    assert "end-entropy-collapse" in kinds(_ends(last + 1.02 * margin, last))
    assert "end-entropy-collapse" not in kinds(_ends(last + 0.98 * margin, last))
    (f,) = [f for f in diagnose(_ends(0.0, -80.0)) if f.kind == "end-entropy-collapse"]
    assert f.remedies == []  # nothing truncated: no cap to raise


def test_a_falling_between_prompt_share_is_length_ignoring_the_problem() -> None:
    points, ratio = BETWEEN_FALL_POINTS, BETWEEN_FALL_RATIO
    key = "length-stops-following-prompt"
    early = 0.6
    assert key in kinds(summary(between_early=early, between_late=ratio * early * 0.98))
    # under half, but only a few points: a small share halving is no finding
    small = 0.9 * points
    assert key not in kinds(summary(between_early=small, between_late=small * 0.1))
    # many points, but not under half
    assert key not in kinds(summary(between_early=early, between_late=ratio * early * 1.02))
    (f,) = [f for f in diagnose(summary(between_early=0.6, between_late=0.2)) if f.kind == key]
    assert "fell from 60% to 20% (threshold: 20 points and under 50%" in f.message


def test_a_long_rollout_tail_is_a_note_beside_healthy() -> None:
    over = summary(tail_late=1.05 * TAIL_SHARE, max_over_median_late=1.05 * TAIL_MAX_OVER_MEDIAN)
    assert kinds(over) == ["rollout-tail", "healthy"]
    (f, _) = diagnose(over)
    assert f.severity == "info" and "the cost of a generous cap" in f.message
    assert "32% of sampling time went to the last 10% of completions" in f.message
    assert [r.override for r in f.remedies] == ["length.overlong_buffer=32"]
    assert kinds(replace(over, tail_late=0.95 * TAIL_SHARE)) == ["healthy"]
    assert kinds(replace(over, max_over_median_late=0.95 * TAIL_MAX_OVER_MEDIAN)) == ["healthy"]
    # an arm whose seeds all have the tail keeps its healthy verdict beside the note
    arm = arm_findings([diagnose(over)] * 3, diagnose(over), [0, 1, 2])
    assert [f.kind for f in arm] == ["rollout-tail", "healthy"]
    # with a pathology the note stays and "healthy" goes
    capped = replace(_cap32(1), tail_late=over.tail_late,
                     max_over_median_late=over.max_over_median_late)
    assert "rollout-tail" in kinds(capped) and "healthy" not in kinds(capped)
