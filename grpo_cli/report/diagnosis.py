"""Plain-language findings from a run's window numbers, each with the numbers that fired it.

Rules compare the first and last windows of steps (10% by default; see summary.py), never
single steps. Every threshold is a named constant with the reason for its value; the remedies
named are config keys this project supports, and a remedy that would set what the run already
has is dropped (:func:`applicable`). An arm of several seeds gets one diagnosis: the findings
that hold in most of its seeds (:func:`arm_findings`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import yaml

from grpo_cli.report.censoring import CapAdvice
from grpo_cli.report.summary import RunSummary, pct_change

# Fewer steps than this and the early and late windows are single noisy steps: no trends.
MIN_TREND_STEPS = 6
# Per-step mean length moves +-15% with the prompt mix on the toy task; window means are
# steadier, so a window-to-window change beyond 15% is a trend, not noise.
LENGTH_FALL_PCT = 15.0
# Beyond ~1 in 7 completions at the cap, the zero reward of truncated answers is a large
# enough share of each group's advantages to steer the policy (EasyR1 #40 saw 20-40%).
HIGH_CLIP_RATIO = 0.15
# Truncated completions "earn less" when their mean reward is below the rest's by a quarter
# of the per-step reward std: after std-normalised advantages that is a clearly signed push.
TRUNC_REWARD_GAP_STD = 0.25
# A rise this large between windows is more than drift from the prompt mix...
EXPLOSION_RISE_PCT = 20.0
# ...and it is an explosion when the late mean sits near the cap or half the batch hits it.
EXPLOSION_CAP_FRACTION = 0.8
EXPLOSION_CLIP_LATE = 0.5
# Dr. GRPO's bias makes wrong answers longer: they must lengthen beyond the noise band...
LOSS_BIAS_RISE_PCT = LENGTH_FALL_PCT
# ...and pull away from the correct ones. The incorrect - correct length gap grows on the toy
# without the bias: at cap 160 over 60 steps by 9-12 tokens (20-28% of the ~45-token early
# mean length) under seq-mean-token-sum-norm, which has no 1/|o| weight, against 13-16 tokens
# (27-39%; 18-22 tokens, 36-46%, with the default window) under seq-mean-token-mean
# (tests/integration/test_reproductions.py and the quick-start sweep). Most of that growth is
# not the bias, so the gap must grow by 60% of the early mean length, about twice what the
# unbiased mode produces: wrong answers running away, the bias's signature.
LOSS_BIAS_GAP_OF_LENGTH = 0.6
# ...and by at least this many tokens: on answers of a dozen tokens 60% is a few words, and
# per-step means move +-15% with the prompt mix (+-3-4 tokens on the toy's ~24-token answers);
# the gap's growth is a difference of four such window means.
LOSS_BIAS_GAP_TOKENS = 10.0
# A Spearman coefficient of -0.2 within prompt groups is a consistent ordering "longer earns
# less"; requiring a 0.2 drop from the first window makes it a change, not a trait of the task.
COUPLING_NEGATIVE = -0.2
COUPLING_DROP = 0.2
# The coupling matters through what it does to length: "longer earns less" pushes length down.
# With length flat or rising it is the task being learnt (wrong answers ramble, correct ones
# are concise: the quick-start's cap-160 control goes from +0.24..+0.33 to -0.10..-0.29 while
# length moves -10%..+17% and reward rises), not a problem to remedy; so length must also fall
# beyond the noise band. (The sign of the turn agrees across seeds there, so requiring sign
# agreement would not tell the two apart.)
COUPLING_LENGTH_FALL_PCT = LENGTH_FALL_PCT
# A length change this large with no truncation or explosion behind it still deserves a look.
DRIFT_PCT = 25.0
# Still this share truncated at the end: the cap binds and hides the policy's natural length
# (the mean of capped lengths barely moves while the policy learns to be short).
CAP_BINDING_LATE = HIGH_CLIP_RATIO

# Entropy collapsing at the end of answers first: the last quarter of tokens loses half its
# entropy, and 25 points more than the first quarter does. On the quick-start sweep the cap-32
# arm's last quarter fell 49-91% against 23-53% for the first (2 of 3 seeds past both bars);
# the cap-160 control's last quarter held (-20%..+9%) while its first quarter fell 76-80% as
# the policy grew sure of its opening: a general sharpening, which this rule must not call a
# collapse at the end.
END_ENTROPY_FALL_PCT = 50.0
END_ENTROPY_MARGIN_PCT = 25.0
# Length stops following the problem: the between-prompt share of length variance falls by 20
# points and to under half its early value. On the toy it rises in every arm (0.23-0.51 ->
# 0.46-0.90) as groups become uniform; a fall is the opposite, every prompt answered alike.
BETWEEN_FALL_POINTS = 0.20
BETWEEN_FALL_RATIO = 0.5
# The rollout's long tail: lengths spread evenly up to the longest spend ~10% of the decode
# steps after 90% of rows ended; the toy's generous cap spends 12-17% with its longest 2.4x its
# median. Three times the even share, with a longest completion 3x the median, is a tail that
# the batch waits on.
TAIL_SHARE = 0.30
TAIL_MAX_OVER_MEDIAN = 3.0
# Findings that describe a cost, not a pathology: they leave a "Healthy" verdict standing.
NOTE_KINDS = ("rollout-tail",)

LENGTH_BIASED_MODE = "seq-mean-token-mean"


@dataclass
class Remedy:
    override: str  # what to type after `grpo run`
    why: str


@dataclass
class Finding:
    kind: str  # truncation-pressure | length-explosion | loss-aggregation-bias |
    # negative-coupling | length-drift | cap-binding | end-entropy-collapse |
    # length-stops-following-prompt | rollout-tail | too-few-steps | healthy
    title: str
    message: str  # one plain sentence with the numbers that fired the rule
    evidence: list[str] = field(default_factory=list)
    remedies: list[Remedy] = field(default_factory=list)
    severity: str = "warning"  # warning | info | ok
    support: str = ""  # an arm's finding: "k of n seeds"


def _f(x: float, spec: str = ".1f") -> str:
    return format(x, spec) if math.isfinite(x) else "n/a"


def _pct(x: float) -> str:
    return f"{x:.0%}" if math.isfinite(x) else "n/a"


def _cap(s: RunSummary) -> int | None:
    return int(s.cap_late) if math.isfinite(s.cap_late) else None


def _raise_cap(s: RunSummary, advice: CapAdvice | None) -> Remedy:
    cap = _cap(s)
    if advice is not None and advice.recommended_cap and cap and advice.recommended_cap > cap:
        return Remedy(f"max_len={advice.recommended_cap}",
                      "the censoring-aware estimate's p95 + 10%: few completions truncated")
    if cap:
        return Remedy(f"max_len={2 * cap}", "a cap the policy rarely reaches stops punishing "
                      "long answers with zero reward")
    return Remedy("max_len=<larger>", "a cap the policy rarely reaches")


def _schedule(s: RunSummary, early_factor: float) -> Remedy:
    cap = _cap(s) or 0
    switch = max(1, (s.last_step + 1) // 2)
    first = int(cap * early_factor) if cap else "<early cap>"
    later = cap or "<cap>"
    return Remedy(f"length.schedule=[[0,{first}],[{switch},{later}]]",
                  "staged caps: a different cap early, the final cap from mid-run "
                  "(or `length=staged`)")


def _overlong(s: RunSummary) -> Remedy:
    cap = _cap(s)
    buf = max(1, cap // 5) if cap else "<tokens>"
    return Remedy(f"length.overlong_buffer={buf}",
                  "DAPO's soft overlong penalty: a graded cost over the last tokens before "
                  "the cap instead of a cliff at it; it charges finished answers in that "
                  "buffer too, so where right answers need those tokens it shortens them "
                  "further (docs/reproductions.md: natural length 24 -> 8 at a 20-token cap)")


MASK = Remedy("algorithm.mask_truncated=true algorithm.mask_truncated_in_adv=true",
              "overlong filtering: truncated completions carry no loss and leave the group "
              "mean/std, so being cut off is not taught as wrong (masking only the loss still "
              "lifts every short answer above the truncated zeros; sweeps/toy_overlong_filter"
              ".yaml shows both)")
TOKEN_MEAN = Remedy("algorithm.loss_agg_mode=token-mean",
                    "every token weighs the same (DAPO); no 1/|o| per-sequence weight")
SUM_NORM = Remedy("algorithm.loss_agg_mode=seq-mean-token-sum-norm",
                  "Dr. GRPO: a constant normaliser, no length dependence")


# Remedy keys written in their short form.
_REMEDY_ALIASES = {"max_len": "data.max_response_length"}
_DEFAULTS: dict[str, Any] | None = None


def _defaults() -> dict[str, Any]:
    global _DEFAULTS
    if _DEFAULTS is None:
        from dataclasses import asdict

        from grpo_cli.config.schema import RunConfig

        _DEFAULTS = asdict(RunConfig())
    return _DEFAULTS


def _lookup(tree: dict[str, Any], key: str) -> tuple[bool, Any]:
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def config_value(config: dict[str, Any], key: str) -> tuple[bool, Any]:
    """``(known, value)`` of a dotted key; a key the config lacks ran at the schema default."""
    key = _REMEDY_ALIASES.get(key, key)
    found, value = _lookup(config, key)
    return (found, value) if found else _lookup(_defaults(), key)


def _same(a: Any, b: Any) -> bool:
    if a == b:
        return True
    return str(a).strip().lower() == str(b).strip().lower()


def applicable(remedy: Remedy, config: dict[str, Any] | None) -> bool:
    """False when every ``key=value`` of the remedy is already the run's setting (a remedy
    must change something). An unknown config (a W&B-only run) keeps every remedy."""
    if not config:
        return True
    pairs = [tok.split("=", 1) for tok in remedy.override.split() if "=" in tok]
    if not pairs:
        return True
    for key, text in pairs:
        known, current = config_value(config, key)
        try:
            wanted = yaml.safe_load(text)
        except yaml.YAMLError:
            wanted = text
        if not known or not _same(wanted, current):
            return True
    return False


def diagnose(s: RunSummary, advice: CapAdvice | None = None,
             config: dict[str, Any] | None = None) -> list[Finding]:
    """Findings for one run, or a single "healthy" finding when no rule fires; remedies the
    run's ``config`` already has are dropped."""
    findings = _diagnose(s, advice)
    for f in findings:
        f.remedies = [r for r in f.remedies if applicable(r, config)]
    return findings


def arm_findings(per_seed: Sequence[list[Finding]], pooled: list[Finding],
                 seeds: Sequence[Any]) -> list[Finding]:
    """One diagnosis for an arm: the findings that hold in most seeds ("k of n seeds").

    ``pooled`` is the diagnosis of the seed-averaged numbers (its sentences carry the arm's
    means); a majority finding the averages do not fire is shown with the first seed that had
    it. Findings of a minority of seeds are listed in one info finding.
    """
    n = len(per_seed)
    if n == 1:
        return per_seed[0]
    who: dict[str, list[int]] = {}
    first: dict[str, Finding] = {}
    for i, findings in enumerate(per_seed):
        for f in findings:
            if i not in who.setdefault(f.kind, []):
                who[f.kind].append(i)
            first.setdefault(f.kind, f)
    majority = [k for k, idx in who.items() if 2 * len(idx) > n]
    out: list[Finding] = []
    for f in pooled:
        if f.kind in majority:
            out.append(replace(f, support=f"{len(who[f.kind])} of {n} seeds",
                               message=f"seed means: {f.message}"))
    for kind in majority:
        if not any(f.kind == kind for f in out):
            f, i = first[kind], who[kind][0]
            out.append(replace(f, support=f"{len(who[kind])} of {n} seeds",
                               message=f"seed={seeds[i]}: {f.message} (the seed means do "
                               "not cross this rule's thresholds)"))
    if any(f.kind not in ("healthy", *NOTE_KINDS) for f in out):
        out = [f for f in out if f.kind != "healthy"]
    minority = [k for k in who if k not in majority]
    if not out:
        out.append(Finding(
            "mixed", "No finding holds in most seeds",
            "the seeds disagree: " + "; ".join(
                f"{first[k].title.lower()} in {len(who[k])} of {n}" for k in who),
            [], [], "info", f"0 of {n} seeds agree"))
    elif minority:
        out.append(Finding(
            "minority", "In a minority of seeds",
            "; ".join(f"{first[k].title} in {len(who[k])} of {n} seeds ("
                      + ", ".join(f"seed={seeds[i]}" for i in who[k]) + ")"
                      for k in minority) + " — see the per-seed detail",
            [], [], "info"))
    return out


def _diagnose(s: RunSummary, advice: CapAdvice | None = None) -> list[Finding]:
    if s.steps < MIN_TREND_STEPS:
        return [Finding(
            "too-few-steps", "Too few steps to judge trends",
            f"only {s.steps} steps were recorded (at least {MIN_TREND_STEPS} are needed to "
            "compare the first and last windows of the run): no diagnosis",
            [f"steps: {s.steps} (< {MIN_TREND_STEPS})"], [], "info")]
    findings = [f for f in (
        _truncation_pressure(s, advice), _explosion(s, advice), _loss_bias(s),
        _coupling(s, advice)) if f is not None]
    explained = ("truncation-pressure", "length-explosion", "loss-aggregation-bias",
                 "negative-coupling")
    if not any(f.kind in explained for f in findings):
        drift = _drift(s)
        if drift is not None:
            findings.append(drift)
    if not any(f.kind in ("truncation-pressure", "length-explosion") for f in findings):
        binding = _cap_binding(s, advice)
        if binding is not None:
            findings.append(binding)
    findings += [f for f in (_end_entropy(s, advice), _between_fall(s)) if f is not None]
    notes = [f for f in (_tail(s),) if f is not None]
    if findings:
        return findings + notes
    evidence = [f"length change: {_f(s.len_change_pct, '+.0f')}% (|change| < "
                f"{LENGTH_FALL_PCT:.0f}% or no cause found)",
                f"clip ratio late: {_pct(s.clip_late)}"]
    gap = gap_growth(s)
    if s.loss_agg_mode == LENGTH_BIASED_MODE and math.isfinite(gap):
        evidence.append(f"incorrect − correct length gap grew {gap:+.1f} tokens (a "
                        f"loss-aggregation finding needs ≥ {_f(_gap_threshold(s))}: "
                        f"{LOSS_BIAS_GAP_OF_LENGTH:.0%} of the early mean length, at least "
                        f"{LOSS_BIAS_GAP_TOKENS:.0f})")
    return [*notes, Finding(
        "healthy", "Healthy",
        f"no length pathology: length moved {_f(s.len_change_pct, '+.0f')}% "
        f"({_f(s.len_initial)} → {_f(s.len_final)} tokens), {_pct(s.clip_late)} truncated "
        f"late, reward {_f(s.reward_early, '.2f')} → {_f(s.reward_late, '.2f')}",
        evidence, [], "ok")]


def _truncation_pressure(s: RunSummary, advice: CapAdvice | None) -> Finding | None:
    pressure = max(s.clip_mean, s.clip_early) if math.isfinite(s.clip_early) else s.clip_mean
    gap = s.reward_terminated - s.reward_truncated
    scale = s.reward_std if math.isfinite(s.reward_std) and s.reward_std > 0 else 0.0
    earns_less = math.isfinite(gap) and gap > TRUNC_REWARD_GAP_STD * scale and gap > 0
    # Under a cap close to the finished answers' length the capped mean barely moves while the
    # policy learns to be short (SmolLM2 at cap 20: -3% in the batch, -25% in the probe), so a
    # fall of the natural length (the probe at a generous cap) counts as the length falling.
    natural = s.natural_change_pct
    fell = s.len_change_pct <= -LENGTH_FALL_PCT
    natural_fell = math.isfinite(natural) and natural <= -LENGTH_FALL_PCT
    if not ((fell or natural_fell) and pressure >= HIGH_CLIP_RATIO and earns_less):
        return None
    if fell:
        what = (f"length fell {-s.len_change_pct:.0f}% ({_f(s.len_initial)} → "
                f"{_f(s.len_final)} tokens; threshold {LENGTH_FALL_PCT:.0f}%)")
        moved = f"length change: {s.len_change_pct:+.0f}% (≤ -{LENGTH_FALL_PCT:.0f}%)"
    else:
        what = (f"the natural length (the probe at a generous cap) fell {-natural:.0f}% "
                f"({_f(s.natural_early)} → {_f(s.natural_late)} tokens; threshold "
                f"{LENGTH_FALL_PCT:.0f}%; the capped length moved "
                f"{_f(s.len_change_pct, '+.0f')}%)")
        moved = (f"natural length change: {natural:+.0f}% (≤ -{LENGTH_FALL_PCT:.0f}%; the "
                 f"capped length moved {_f(s.len_change_pct, '+.0f')}%)")
    return Finding(
        "truncation-pressure", "Truncation pressure",
        f"{what} while {_pct(s.clip_mean)} of completions "
        f"were truncated ({_pct(s.clip_early)} early, {_pct(s.clip_late)} late; threshold "
        f"{HIGH_CLIP_RATIO:.0%}) and truncated completions earned {s.reward_truncated:.2f} "
        f"against {s.reward_terminated:.2f} for the rest (gap {gap:.2f}; threshold "
        f"{TRUNC_REWARD_GAP_STD * scale:.2f} = {TRUNC_REWARD_GAP_STD} × reward std): "
        "truncation pressure; raise max_len or mask truncated",
        [moved,
         f"truncated share (the larger of run mean and early window): {_pct(pressure)} "
         f"(≥ {HIGH_CLIP_RATIO:.0%})",
         f"reward gap terminated − truncated: {gap:.2f} (> {TRUNC_REWARD_GAP_STD} × reward "
         f"std {scale:.2f})"],
        [_raise_cap(s, advice), MASK, _overlong(s), _schedule(s, 2.0)])


def _explosion(s: RunSummary, advice: CapAdvice | None) -> Finding | None:
    near_cap = (math.isfinite(s.cap_late) and s.cap_late > 0
                and s.len_final >= EXPLOSION_CAP_FRACTION * s.cap_late)
    if not (s.len_change_pct >= EXPLOSION_RISE_PCT
            and (near_cap or s.clip_late >= EXPLOSION_CLIP_LATE)):
        return None
    share = s.len_final / s.cap_late if math.isfinite(s.cap_late) and s.cap_late else math.nan
    return Finding(
        "length-explosion", "Length explosion",
        f"length rose {s.len_change_pct:.0f}% ({_f(s.len_initial)} → {_f(s.len_final)} "
        f"tokens; threshold {EXPLOSION_RISE_PCT:.0f}%) to {_pct(share)} of the "
        f"{_f(s.cap_late, '.0f')}-token cap (threshold {EXPLOSION_CAP_FRACTION:.0%}) with "
        f"{_pct(s.clip_late)} of completions truncated late (threshold "
        f"{EXPLOSION_CLIP_LATE:.0%}; either suffices): length explosion; add an overlong "
        "penalty or switch the loss aggregation",
        [f"length change: {s.len_change_pct:+.0f}% (≥ +{EXPLOSION_RISE_PCT:.0f}%)",
         f"late mean / cap: {_pct(share)} (≥ {EXPLOSION_CAP_FRACTION:.0%}) or late clip "
         f"ratio {_pct(s.clip_late)} (≥ {EXPLOSION_CLIP_LATE:.0%})"],
        [_overlong(s), TOKEN_MEAN, _schedule(s, 0.5),
         Remedy("length.penalty=none", "if a length-aware reward is on: a cosine reward with "
                "r0_correct < rL_correct pays for length")])


def gap_growth(s: RunSummary) -> float:
    """Tokens the incorrect - correct length gap grew, first -> last window (the incorrect
    answers' own growth when too few answers were correct to measure the gap)."""
    inc = s.incorrect_len_late - s.incorrect_len_early
    cor = s.correct_len_late - s.correct_len_early
    return inc - cor if math.isfinite(cor) else inc


def _gap_threshold(s: RunSummary) -> float:
    """The gap growth a loss-aggregation finding needs, in tokens."""
    rel = LOSS_BIAS_GAP_OF_LENGTH * s.len_initial if math.isfinite(s.len_initial) else 0.0
    return max(LOSS_BIAS_GAP_TOKENS, rel)


def _loss_bias(s: RunSummary) -> Finding | None:
    if s.loss_agg_mode != LENGTH_BIASED_MODE:
        return None
    rise, other, gap = s.incorrect_change_pct, s.correct_change_pct, gap_growth(s)
    need = _gap_threshold(s)
    if not (math.isfinite(rise) and rise >= LOSS_BIAS_RISE_PCT
            and math.isfinite(gap) and gap >= need):
        return None
    correct = (f"correct ones changed {other:+.0f}% ({_f(s.correct_len_early)} → "
               f"{_f(s.correct_len_late)})" if math.isfinite(other)
               else "correct ones are too few to compare")
    rule = (f"threshold: {need:.1f} tokens, the larger of {LOSS_BIAS_GAP_TOKENS:.0f} and "
            f"{LOSS_BIAS_GAP_OF_LENGTH:.0%} of the {_f(s.len_initial)}-token early mean length")
    return Finding(
        "loss-aggregation-bias", "Loss-aggregation length bias",
        f"incorrect completions lengthened {rise:.0f}% ({_f(s.incorrect_len_early)} → "
        f"{_f(s.incorrect_len_late)} tokens; threshold {LOSS_BIAS_RISE_PCT:.0f}%) while "
        f"{correct}: the incorrect − correct gap grew {gap:.1f} tokens ({rule}) under "
        f"algorithm.loss_agg_mode={LENGTH_BIASED_MODE}: each token of a long wrong answer is "
        "penalised less (1/|o| weight, Dr. GRPO's length bias); use token-mean or "
        "seq-mean-token-sum-norm",
        [f"loss_agg_mode: {s.loss_agg_mode}",
         f"incorrect length change: {rise:+.0f}% (≥ +{LOSS_BIAS_RISE_PCT:.0f}%)",
         f"incorrect − correct gap growth: {gap:+.1f} tokens (≥ {need:.1f}: "
         f"max({LOSS_BIAS_GAP_TOKENS:.0f}, {LOSS_BIAS_GAP_OF_LENGTH} × early mean length "
         f"{_f(s.len_initial)}))"],
        [TOKEN_MEAN, SUM_NORM])


def _coupling(s: RunSummary, advice: CapAdvice | None) -> Finding | None:
    if math.isfinite(s.corr_within_early) and math.isfinite(s.corr_within_late):
        early, late, where = s.corr_within_early, s.corr_within_late, "within prompt groups"
    else:
        early, late, where = s.corr_batch_early, s.corr_batch_late, "over the batch"
    if not (math.isfinite(early) and math.isfinite(late)):
        return None
    if not (late <= COUPLING_NEGATIVE and early - late >= COUPLING_DROP
            and math.isfinite(s.len_change_pct)
            and s.len_change_pct <= -COUPLING_LENGTH_FALL_PCT):
        return None
    capped = math.isfinite(s.clip_mean) and s.clip_mean >= HIGH_CLIP_RATIO
    if capped:
        cause = (f"the cap's zero reward is a likely cause: {_pct(s.clip_mean)} of "
                 "completions were truncated")
        remedies = [_raise_cap(s, advice), MASK, _overlong(s)]
    else:
        cause = (f"not the cap ({_pct(s.clip_mean)} truncated): long wrong answers or a "
                 "length term in the reward")
        remedies = [TOKEN_MEAN, Remedy("length.penalty=none", "rule out a length-aware reward")]
    return Finding(
        "negative-coupling", "Reward-length coupling turned negative",
        f"the reward-length Spearman correlation {where} went from {early:+.2f} to "
        f"{late:+.2f} (threshold: ≤ {COUPLING_NEGATIVE} late after a drop of ≥ "
        f"{COUPLING_DROP}) and length fell {-s.len_change_pct:.0f}% ({_f(s.len_initial)} → "
        f"{_f(s.len_final)} tokens; threshold {COUPLING_LENGTH_FALL_PCT:.0f}%): longer "
        f"completions now earn less and length is following; {cause}",
        [f"Spearman {where}, late: {late:+.2f} (≤ {COUPLING_NEGATIVE})",
         f"drop from early: {early - late:.2f} (≥ {COUPLING_DROP})",
         f"length change: {s.len_change_pct:+.0f}% (≤ -{COUPLING_LENGTH_FALL_PCT:.0f}%)",
         f"truncated share: {_pct(s.clip_mean)}"],
        remedies)


def _cap_binding(s: RunSummary, advice: CapAdvice | None) -> Finding | None:
    if not (math.isfinite(s.clip_late) and s.clip_late >= CAP_BINDING_LATE):
        return None
    return Finding(
        "cap-binding", "The cap binds",
        f"{_pct(s.clip_late)} of completions were still truncated over the last "
        f"{s.window} step(s) at a {_f(s.cap_late, '.0f')}-token cap (threshold "
        f"{CAP_BINDING_LATE:.0%}): the cap hides the "
        "policy's natural length (see the censoring-aware estimate), and if length starts "
        "to fall this becomes truncation pressure",
        [f"clip ratio late: {_pct(s.clip_late)} (≥ {CAP_BINDING_LATE:.0%})"],
        [_raise_cap(s, advice), MASK], "info")


def _drift(s: RunSummary) -> Finding | None:
    if not (math.isfinite(s.len_change_pct) and abs(s.len_change_pct) >= DRIFT_PCT):
        return None
    way = "fell" if s.len_change_pct < 0 else "rose"
    if s.clip_mean >= HIGH_CLIP_RATIO:
        why = (f"{_pct(s.clip_mean)} of completions truncated, but they earned no less than "
               "the rest")
    else:
        why = f"only {_pct(s.clip_mean)} of completions truncated"
    return Finding(
        "length-drift", "Length drift not explained by the cap",
        f"length {way} {abs(s.len_change_pct):.0f}% ({_f(s.len_initial)} → "
        f"{_f(s.len_final)} tokens; threshold {DRIFT_PCT:.0f}%) with {why}: check the "
        "reward's length terms and the loss aggregation",
        [f"length change: {s.len_change_pct:+.0f}% (|change| ≥ {DRIFT_PCT:.0f}%)",
         f"truncated share: {_pct(s.clip_mean)} (< {HIGH_CLIP_RATIO:.0%} or truncated "
         "completions not earning less)"],
        [TOKEN_MEAN, Remedy("length.penalty=none", "rule out a length-aware reward")], "info")


def _end_entropy(s: RunSummary, advice: CapAdvice | None) -> Finding | None:
    last = pct_change(s.ent_last_early, s.ent_last_late)
    first = pct_change(s.ent_first_early, s.ent_first_late)
    if not (math.isfinite(last) and math.isfinite(first) and last <= -END_ENTROPY_FALL_PCT
            and first - last >= END_ENTROPY_MARGIN_PCT):
        return None
    evidence = [f"last-quarter entropy: {last:+.0f}% (≤ -{END_ENTROPY_FALL_PCT:.0f}%)",
                f"first-quarter entropy: {first:+.0f}% (the last must fall ≥ "
                f"{END_ENTROPY_MARGIN_PCT:.0f} points more)"]
    trunc = pct_change(s.ent_trunc_early, s.ent_trunc_late)
    done = pct_change(s.ent_finished_early, s.ent_finished_late)
    outcome = ""
    if math.isfinite(trunc) and math.isfinite(done):
        outcome = (f"; truncated completions' entropy changed {trunc:+.0f}%, finished ones' "
                   f"{done:+.0f}%")
        evidence.append(f"entropy, truncated vs finished: {trunc:+.0f}% vs {done:+.0f}%")
    capped = math.isfinite(s.clip_mean) and s.clip_mean >= HIGH_CLIP_RATIO
    return Finding(
        "end-entropy-collapse", "Entropy collapsed at the end of answers first",
        f"mean token entropy over the last quarter of each completion fell {-last:.0f}% "
        f"({_f(s.ent_last_early, '.3f')} → {_f(s.ent_last_late, '.3f')} nats; threshold "
        f"{END_ENTROPY_FALL_PCT:.0f}%) while the first quarter changed {first:+.0f}% "
        f"({_f(s.ent_first_early, '.3f')} → {_f(s.ent_first_late, '.3f')}){outcome}: the "
        "policy stopped exploring how answers end, the first sign of a collapse toward short "
        "answers", evidence,
        [_raise_cap(s, advice), MASK] if capped else [], "info")


def _between_fall(s: RunSummary) -> Finding | None:
    early, late = s.between_early, s.between_late
    if not (math.isfinite(early) and math.isfinite(late) and early - late >= BETWEEN_FALL_POINTS
            and late <= BETWEEN_FALL_RATIO * early):
        return None
    return Finding(
        "length-stops-following-prompt", "Length stopped following the problem",
        f"the share of length variance between prompts fell from {_pct(early)} to "
        f"{_pct(late)} (threshold: {BETWEEN_FALL_POINTS * 100:.0f} points and under "
        f"{BETWEEN_FALL_RATIO:.0%} of its early value): answers are about as long whatever "
        "the problem, so length no longer adapts to difficulty",
        [f"between-prompt share: {_pct(early)} → {_pct(late)}"], [], "info")


def _tail(s: RunSummary) -> Finding | None:
    tail, ratio = s.tail_late, s.max_over_median_late
    if not (math.isfinite(tail) and math.isfinite(ratio) and tail >= TAIL_SHARE
            and ratio >= TAIL_MAX_OVER_MEDIAN):
        return None
    return Finding(
        "rollout-tail", "A long rollout tail",
        f"{_pct(tail)} of sampling time went to the last 10% of completions and the longest "
        f"was {ratio:.1f}× the median over the last {s.window} step(s) (thresholds "
        f"{TAIL_SHARE:.0%} and {TAIL_MAX_OVER_MEDIAN:.0f}×): the cost of a generous cap, paid "
        "in every step's sampling", [f"rollout tail share: {_pct(tail)} (≥ {TAIL_SHARE:.0%})",
                                     f"longest / median length: {ratio:.1f} (≥ "
                                     f"{TAIL_MAX_OVER_MEDIAN:.0f})"],
        [_overlong(s)], "info")
