"""Censoring-aware length estimate: what the policy would write without the cap.

A truncated completion's length is a lower bound (it would have gone on), i.e. a
right-censored observation; a terminated one is exact. Kaplan-Meier (``scipy.stats.ecdf`` on
``CensoredData``) estimates the survival curve S(x) = P(length > x) from both. The estimate
assumes the policy's length distribution is the same whatever the cap, which is false once RL
has adapted to the cap: read it as "what this policy, at this point, would write", not as the
distribution a run with a bigger cap would reach.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

# A cap should truncate at most this share of completions: 5% keeps truncation a rare event
# whose zero reward no longer shapes the policy (DAPO's overlong analysis works in this range).
TARGET_TRUNCATION = 0.05
CAP_MARGIN = 1.10  # headroom on the estimated p95, for the policy lengthening as it learns
CAP_MULTIPLES = (0.5, 0.75, 1.0, 1.5, 2.0)  # candidate caps, as multiples of the current cap

def assumption(window_label: str = "10% of steps", pooled: bool = False) -> str:
    """The estimate's assumptions, for the report's KM section."""
    seeds = (" (an arm's seeds pooled: they share one config, so one policy distribution is "
             "assumed)" if pooled else "")
    return ASSUMPTION.replace("the last 10% of steps", f"the last {window_label}{seeds}")


ASSUMPTION = (
    "Truncated lengths are treated as right-censored (the completion would have been at "
    "least that long) and the distribution is estimated with Kaplan-Meier on the last 10% "
    "of steps. This assumes the policy would produce the same lengths whatever the cap, "
    "which is false once RL has adapted to the cap (a policy trained under a tight cap has "
    "learnt to be short); shares beyond the longest observed completion cannot be estimated."
)


@dataclass
class KMEstimate:
    """Kaplan-Meier survival of response length, with what it implies for caps."""

    n: int
    n_censored: int
    steps: tuple[int, int]  # first and last step used
    naive_mean: float  # mean of the observed (capped) lengths
    km_mean: float  # restricted mean: area under S(x) up to the largest observation
    max_observed: float
    censored_at_max: bool  # S stays above 0 after the largest observation
    times: np.ndarray  # the step function S: value probs[i] on [times[i], times[i+1])
    probs: np.ndarray
    ci_low: np.ndarray  # 95% pointwise confidence band at ``times``
    ci_high: np.ndarray
    p95: float | None  # smallest x with S(x) <= TARGET_TRUNCATION; None if never reached
    naive_times: np.ndarray  # the survival curve if truncated lengths were true lengths
    naive_probs: np.ndarray

    def share_longer(self, cap: float) -> float:
        """Estimated share of completions a cap of ``cap`` tokens would truncate, P(L > cap).

        NaN beyond the largest observation when that observation was itself censored (the
        curve is unknown there).
        """
        if cap < self.times[0]:
            return 1.0
        if cap > self.max_observed:
            return 0.0 if not self.censored_at_max else math.nan
        i = int(np.searchsorted(self.times, cap, side="right")) - 1
        return float(self.probs[i])


@dataclass
class CapAdvice:
    current_cap: int | None
    shares: list[tuple[float, int, float]]  # (multiple of the cap, cap, share truncated)
    recommended_cap: int | None  # ceil(p95 * margin) above the current cap; else None
    censored_beyond: float | None  # "more than X": S never fell below the target
    message: str
    keep: bool = False  # the current cap truncates at most the target: never advise lowering


def kaplan_meier(lengths: np.ndarray, truncated: np.ndarray,
                 steps: tuple[int, int] = (0, 0)) -> KMEstimate:
    """KM estimate from lengths (tokens) and truncation flags (True = right-censored)."""
    lengths = np.asarray(lengths, dtype=np.float64)
    truncated = np.asarray(truncated, dtype=bool)
    if lengths.shape != truncated.shape or lengths.size == 0:
        raise ValueError("need equally long, non-empty lengths and truncation flags")
    if truncated.all():
        raise ValueError("every completion was truncated: the length distribution is "
                         "unidentified below the cap")
    data = stats.CensoredData(uncensored=lengths[~truncated], right=lengths[truncated])
    res = stats.ecdf(data)
    times = np.asarray(res.sf.quantiles, dtype=np.float64)
    probs = np.asarray(res.sf.probabilities, dtype=np.float64)
    with warnings.catch_warnings():  # the band is NaN where undefined; that is fine
        warnings.simplefilter("ignore")
        ci = res.sf.confidence_interval(0.95)
        low, high = ci.low.evaluate(times), ci.high.evaluate(times)
    widths = np.diff(times, append=times[-1])
    km_mean = float(times[0] + np.sum(probs * widths))
    below = np.flatnonzero(probs <= TARGET_TRUNCATION)
    naive_times, counts = np.unique(lengths, return_counts=True)
    return KMEstimate(
        n=int(lengths.size), n_censored=int(truncated.sum()), steps=steps,
        naive_mean=float(lengths.mean()), km_mean=km_mean,
        max_observed=float(times[-1]), censored_at_max=bool(probs[-1] > 0),
        times=times, probs=probs, ci_low=np.asarray(low), ci_high=np.asarray(high),
        p95=float(times[below[0]]) if below.size else None,
        naive_times=naive_times, naive_probs=1.0 - np.cumsum(counts) / lengths.size,
    )


def cap_advice(km: KMEstimate, current_cap: int | None) -> CapAdvice:
    """Shares truncated at multiples of the current cap, and a recommended cap."""
    shares = []
    if current_cap:
        for m in CAP_MULTIPLES:
            cap = int(round(current_cap * m))
            shares.append((m, cap, km.share_longer(cap)))
    if km.p95 is not None:
        rec = int(math.ceil(km.p95 * CAP_MARGIN))
        observed = km.n_censored / km.n
        if current_cap and (observed <= TARGET_TRUNCATION or rec <= current_cap):
            # A cap that (almost) truncates nothing is not the problem: never advise lowering
            # (or nudging) it; say what a tighter cap would cost instead.
            tight = int(math.ceil(km.p95))
            msg = (f"no change needed: the current cap of {current_cap} tokens truncated "
                   f"{observed:.1%} of completions ({km.n_censored} of {km.n})")
            if tight < current_cap:
                msg += (f"; a cap of {tight} tokens would truncate "
                        f"~{km.share_longer(tight):.0%} (KM estimate)")
            return CapAdvice(current_cap, shares, None, None, msg, keep=True)
        msg = (f"recommended cap: {rec} tokens (estimated p95 {km.p95:.0f} tokens + "
               f"{CAP_MARGIN - 1:.0%} margin)")
        if current_cap:
            msg += (f"; the current cap of {current_cap} truncated {observed:.0%} of "
                    "completions")
        return CapAdvice(current_cap, shares, rec, None, msg)
    msg = (f"recommended cap: more than {km.max_observed:.0f} tokens — the estimate is "
           f"censored ({km.probs[-1]:.0%} of completions still run past the longest "
           "observed length, so p95 cannot be estimated); raise max_len and look again")
    return CapAdvice(current_cap, shares, None, km.max_observed, msg)
