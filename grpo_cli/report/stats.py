"""Statistics over seeds: a mean with its 95% t interval, and Welch's two-sample comparison.

Pure functions of arrays (NaN values are dropped first). Seeds are the replicates: an arm's
number is the mean of its seeds' window means, and the interval says how far another draw of
seeds could move it. With fewer than two values there is no interval and no test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95
METHOD = "95% t interval over seeds (mean ± t(0.975, n−1)·s/√n)"
TEST = "Welch's t-test (unequal variances), two-sided; no correction for several comparisons"


def _clean(values) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64).ravel()
    return a[np.isfinite(a)]


@dataclass(frozen=True)
class Estimate:
    """A mean over ``n`` values with the half-width of its 95% interval (NaN when n < 2)."""

    mean: float
    half: float
    n: int
    sd: float

    @property
    def low(self) -> float:
        return self.mean - self.half

    @property
    def high(self) -> float:
        return self.mean + self.half


def mean_ci(values, level: float = LEVEL) -> Estimate:
    """Mean and t interval: mean ± t_{(1+level)/2, n−1} · sd / sqrt(n) (sd with ddof=1)."""
    a = _clean(values)
    n = int(a.size)
    if n == 0:
        return Estimate(math.nan, math.nan, 0, math.nan)
    mean = float(a.mean())
    if n < 2:
        return Estimate(mean, math.nan, 1, math.nan)
    sd = float(a.std(ddof=1))
    half = float(stats.t.ppf((1 + level) / 2, n - 1) * sd / math.sqrt(n))
    return Estimate(mean, half, n, sd)


@dataclass(frozen=True)
class Comparison:
    """``b − a``: difference of means, its Welch interval and two-sided p-value.

    ``reason`` is set (and the numbers NaN) when it cannot be tested.
    """

    diff: float
    low: float
    high: float
    p: float
    df: float
    n_a: int
    n_b: int
    reason: str = ""

    @property
    def tested(self) -> bool:
        return not self.reason


def welch(a, b, level: float = LEVEL) -> Comparison:
    """Welch's t-test of mean(b) − mean(a), with the Welch–Satterthwaite degrees of freedom."""
    a, b = _clean(a), _clean(b)
    na, nb = int(a.size), int(b.size)
    diff = float(b.mean() - a.mean()) if na and nb else math.nan
    if na < 2 or nb < 2:
        return Comparison(diff, math.nan, math.nan, math.nan, math.nan, na, nb,
                          f"cannot be tested: n = {na} and {nb} seeds (a test needs ≥ 2 each)")
    va, vb = a.var(ddof=1) / na, b.var(ddof=1) / nb
    se2 = float(va + vb)
    if se2 == 0:
        return Comparison(diff, diff, diff, math.nan, math.nan, na, nb,
                          "cannot be tested: every seed gave the same value")
    se = math.sqrt(se2)
    df = se2 ** 2 / (va ** 2 / (na - 1) + vb ** 2 / (nb - 1))
    t = diff / se
    p = float(2 * stats.t.sf(abs(t), df))
    half = float(stats.t.ppf((1 + level) / 2, df) * se)
    return Comparison(diff, diff - half, diff + half, p, float(df), na, nb)


def direction(e: Estimate, what: tuple[str, str] = ("falls", "rises")) -> str:
    """``falls`` / ``rises`` when the interval excludes 0, else a plain "no clear change"."""
    if e.n < 2 or not math.isfinite(e.half):
        return "n = 1: no interval" if e.n == 1 else "–"
    if e.high < 0:
        return f"{what[0]} (interval below 0)"
    if e.low > 0:
        return f"{what[1]} (interval above 0)"
    return "no clear change (interval spans 0)"
