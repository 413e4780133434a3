"""The statistics engine: the only place a mean, an interval or a p-value is computed.

    s = summarize([0.261, 0.255, 0.266])            # Summary(n, mean, sd, ci_low, ci_high), 95% t-interval
    t, p = one_sample_greater(cores, 0.256525)       # one-sided one-sample t-test: mean > threshold
    c = compare_samples(record_times, new_times)     # Welch: diff, its CI, two-sided p, ratio with Fieller CI

Distributions come from scipy (``scipy.stats.t``); this module only assembles the textbook statistics from
them, so that every number on the board is computed one way. ``harness.compare`` (an A/B comparison of two
submissions) uses ``compare_samples`` for any metric.

The acceptance rule that uses them (``assess``) is the referee's, in ``harness/referee.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize
from scipy import stats as sps

CONFIDENCE = 0.95

NAN = float("nan")


@dataclass(frozen=True)
class Summary:
    """n, mean, sample standard deviation (ddof=1) and a two-sided t confidence interval for the mean.

    With one value, sd and the interval are NaN: one run says nothing about run-to-run noise.
    """

    n: int
    mean: float
    sd: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class Comparison:
    """Two independent samples a and b compared with Welch's unequal-variance t-test.

    diff = mean_a - mean_b with its Welch confidence interval; t and df are Welch's statistic and
    Welch-Satterthwaite degrees of freedom; p_value is two-sided, p_greater one-sided (H1: mean_a > mean_b).
    ratio = mean_a / mean_b; its interval is Fieller's, taken as the exact inversion of Welch's test: every
    r for which Welch's two-sided test of a against r*b does not reject at the chosen confidence. It is NaN
    when that set is unbounded (mean_b not clearly away from zero) and when a sample has fewer than 2 values.
    """

    mean_a: float
    mean_b: float
    diff: float
    diff_ci_low: float
    diff_ci_high: float
    t: float
    df: float
    p_value: float
    p_greater: float
    ratio: float
    ratio_ci_low: float
    ratio_ci_high: float


def _values(values: Sequence[float], what: str) -> np.ndarray:
    arr = np.asarray(list(values), dtype=float)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{what}: need at least one number, got {list(values)!r}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what}: every value must be a finite number, got {arr.tolist()!r}; drop missing runs first")
    return arr


def summarize(values: Sequence[float], confidence: float = CONFIDENCE) -> Summary:
    arr = _values(values, "summarize")
    n, mean = arr.size, float(arr.mean())
    if n < 2:
        return Summary(n, mean, NAN, NAN, NAN)
    sd = float(arr.std(ddof=1))
    half = float(sps.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return Summary(n, mean, sd, mean - half, mean + half)


def one_sample_greater(values: Sequence[float], threshold: float) -> tuple[float, float]:
    """One-sided one-sample t-test of H1: mean > threshold. Returns (t, p); NaN for fewer than 2 values.

    The modded-nanogpt record test, turned around: they test mean loss below a target
    (docs/spec/benchmark-practice.md, modded-nanogpt).
    """
    arr = _values(values, "one_sample_greater")
    if arr.size < 2:
        return NAN, NAN
    sem = float(arr.std(ddof=1)) / math.sqrt(arr.size)
    if sem == 0.0:
        return NAN, NAN  # identical values: no noise estimate, no test
    t = (float(arr.mean()) - threshold) / sem
    return t, float(sps.t.sf(t, arr.size - 1))


def _welch(mean_a: float, var_a: float, n_a: int, mean_b: float, var_b: float, n_b: int) -> tuple[float, float]:
    """Welch's t and Welch-Satterthwaite df for mean_a - mean_b; var_* are variances of the means."""
    se2 = var_a + var_b
    t = (mean_a - mean_b) / math.sqrt(se2)
    df = se2**2 / (var_a**2 / (n_a - 1) + var_b**2 / (n_b - 1))
    return t, df


def compare_samples(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> Comparison:
    xa, xb = _values(a, "compare_samples (a)"), _values(b, "compare_samples (b)")
    mean_a, mean_b = float(xa.mean()), float(xb.mean())
    ratio = mean_a / mean_b if mean_b != 0 else NAN
    if xa.size < 2 or xb.size < 2:
        return Comparison(mean_a, mean_b, mean_a - mean_b, NAN, NAN, NAN, NAN, NAN, NAN, ratio, NAN, NAN)
    n_a, n_b = xa.size, xb.size
    var_a, var_b = float(xa.var(ddof=1)) / n_a, float(xb.var(ddof=1)) / n_b
    diff = mean_a - mean_b
    if var_a + var_b == 0.0:
        return Comparison(mean_a, mean_b, diff, NAN, NAN, NAN, NAN, NAN, NAN, ratio, NAN, NAN)
    t, df = _welch(mean_a, var_a, n_a, mean_b, var_b, n_b)
    half = float(sps.t.ppf(0.5 + confidence / 2, df)) * math.sqrt(var_a + var_b)
    p_value = float(2 * sps.t.sf(abs(t), df))
    p_greater = float(sps.t.sf(t, df))
    low, high = _fieller(mean_a, var_a, n_a, mean_b, var_b, n_b, confidence)
    return Comparison(mean_a, mean_b, diff, diff - half, diff + half, t, df, p_value, p_greater, ratio, low, high)


def _fieller(
    mean_a: float, var_a: float, n_a: int, mean_b: float, var_b: float, n_b: int, confidence: float
) -> tuple[float, float]:
    """Interval of ratios r = mean_a/mean_b that Welch's test of a against r*b does not reject.

    Scaling sample b by r scales its mean by r and the variance of its mean by r^2, so the test statistic is
    (mean_a - r*mean_b) / sqrt(var_a + r^2 var_b) with Welch's df at that r; the interval's ends are where
    |statistic| meets the t quantile. Far from the estimate |statistic| tends to |mean_b|/sqrt(var_b) with
    n_b - 1 df: when that is not above the quantile, the set is unbounded and we return NaN.
    """
    if mean_b == 0.0 or var_b == 0.0:
        return NAN, NAN
    level = 0.5 + confidence / 2

    def excess(r: float) -> float:
        t, df = _welch(mean_a, var_a, n_a, r * mean_b, r * r * var_b, n_b)
        return abs(t) - float(sps.t.ppf(level, df))

    if abs(mean_b) / math.sqrt(var_b) <= sps.t.ppf(level, n_b - 1):
        return NAN, NAN
    estimate = mean_a / mean_b
    ends = []
    for direction in (-1.0, 1.0):
        # Walk outwards, doubling the step, until the test rejects; then the end lies in the last step.
        step = max(abs(estimate), 1e-12) * 1e-3
        inner, outer = estimate, estimate + direction * step
        while excess(outer) <= 0:
            inner, step = outer, step * 2
            outer = estimate + direction * step
            if step > 1e12 * max(abs(estimate), 1.0):
                return NAN, NAN
        ends.append(optimize.brentq(excess, inner, outer, xtol=1e-14, rtol=1e-12))
    return ends[0], ends[1]


def task_means(per_run: Sequence[dict[str, float]]) -> dict[str, Summary]:
    """Per-task summaries over runs (e.g. each CORE task's centered accuracy), labels in sorted order."""
    labels = sorted({label for run in per_run for label in run})
    return {label: summarize([run[label] for run in per_run if label in run]) for label in labels}
