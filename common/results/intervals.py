"""95% confidence intervals for claims over seeds, from `scipy.stats`.

A claim compares a linear contrast of cell means (one cell, a difference of two, a difference of gaps) with a
threshold. Where every cell of the contrast was measured at the same seeds, the contrast is formed per seed
and its mean gets a one-sample t interval (paired); otherwise the cells are independent samples and the
interval is Welch's (two cells: `scipy.stats.ttest_ind(equal_var=False)`; more: the Welch-Satterthwaite
degrees of freedom). A contrast with no spread (identical values at every seed) has a zero-width interval."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
HELD, FAILED, INCONCLUSIVE = "held", "failed", "inconclusive"


@dataclass(frozen=True)
class Interval:
    """An estimate with its confidence interval; `method` says how it was formed, `n` from how many seeds
    (paired) or the smallest cell (independent)."""

    estimate: float
    low: float
    high: float
    n: int
    method: str

    def text(self, digits: int = 2, signed: bool = False) -> str:
        fmt = f"{{:+.{digits}f}}" if signed else f"{{:.{digits}f}}"
        if not math.isfinite(self.low) or not math.isfinite(self.high):
            return f"{fmt.format(self.estimate)}, 95% CI undefined ({self.method}, n={self.n})"
        return (
            f"{fmt.format(self.estimate)}, 95% CI [{fmt.format(self.low)}, {fmt.format(self.high)}] "
            f"({self.method}, n={self.n})"
        )

    def as_dict(self) -> dict[str, float | int | str | None]:
        def clean(value: float) -> float | None:
            return value if math.isfinite(value) else None

        return {
            "estimate": clean(self.estimate),
            "low": clean(self.low),
            "high": clean(self.high),
            "n": self.n,
            "method": self.method,
        }


def _t_interval(values: np.ndarray, method: str, confidence: float) -> Interval:
    estimate = float(values.mean())
    if values.size < 2:
        return Interval(estimate, -math.inf, math.inf, int(values.size), method)
    if np.ptp(values) == 0:
        return Interval(estimate, estimate, estimate, int(values.size), method)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # near-constant samples: scipy warns, result is fine
        ci = stats.ttest_1samp(values, 0.0).confidence_interval(confidence)
    return Interval(estimate, float(ci.low), float(ci.high), int(values.size), method)


def contrast_interval(
    terms: Sequence[tuple[float, Mapping[int, float]]], confidence: float = CONFIDENCE
) -> Interval:
    """Interval of sum_i c_i * mean(cell_i), each cell given as {seed: value}."""
    if not terms or any(not cell for _, cell in terms):
        return Interval(math.nan, -math.inf, math.inf, 0, "no runs")
    seed_sets = [frozenset(cell) for _, cell in terms]
    if len(terms) == 1:
        values = np.array(list(terms[0][1].values()), dtype=float) * terms[0][0]
        return _t_interval(values, "t", confidence)
    if all(s == seed_sets[0] for s in seed_sets):
        seeds = sorted(seed_sets[0])
        per_seed = np.array([sum(c * cell[s] for c, cell in terms) for s in seeds], dtype=float)
        return _t_interval(per_seed, "paired t", confidence)
    samples = [(c, np.array(list(cell.values()), dtype=float)) for c, cell in terms]
    estimate = float(sum(c * x.mean() for c, x in samples))
    n = min(x.size for _, x in samples)
    if n < 2:
        return Interval(estimate, -math.inf, math.inf, n, "Welch t")
    parts = [c * c * x.var(ddof=1) / x.size for c, x in samples]
    variance = float(sum(parts))
    if variance == 0:
        return Interval(estimate, estimate, estimate, n, "Welch t")
    if len(samples) == 2:
        (c1, x1), (c2, x2) = samples
        if c1 == 1 and c2 == -1:
            ci = stats.ttest_ind(x1, x2, equal_var=False).confidence_interval(confidence)
            return Interval(estimate, float(ci.low), float(ci.high), n, "Welch t")
    dof = variance**2 / sum(p * p / (x.size - 1) for p, (_, x) in zip(parts, samples, strict=True) if p > 0)
    half = float(stats.t.ppf(0.5 + confidence / 2, dof)) * math.sqrt(variance)
    return Interval(estimate, estimate - half, estimate + half, n, "Welch t")


def probability_of_improvement(better: Mapping[int, float], worse: Mapping[int, float]) -> float | None:
    """P(X > Y) for a random run X of `better` and Y of `worse` (ties count half): the Mann-Whitney U
    statistic over n*m, as in Agarwal et al. (2021)."""
    if not better or not worse:
        return None
    x, y = list(better.values()), list(worse.values())
    return float(stats.mannwhitneyu(x, y, alternative="two-sided").statistic) / (len(x) * len(y))


def verdict_above(interval: Interval, threshold: float, strict: bool = True) -> str:
    """The quantity exceeds `threshold` (>= when not strict): held when the whole interval does, failed when
    the whole interval does not."""
    if strict:
        if interval.low > threshold:
            return HELD
        return FAILED if interval.high <= threshold else INCONCLUSIVE
    if interval.low >= threshold:
        return HELD
    return FAILED if interval.high < threshold else INCONCLUSIVE


def verdict_below(interval: Interval, threshold: float) -> str:
    """The quantity is at most `threshold`."""
    if interval.high <= threshold:
        return HELD
    return FAILED if interval.low > threshold else INCONCLUSIVE


def verdict_within(interval: Interval, low: float, high: float) -> str:
    """The quantity lies in [low, high]."""
    if interval.low >= low and interval.high <= high:
        return HELD
    return FAILED if interval.high < low or interval.low > high else INCONCLUSIVE


def combine(verdicts: Sequence[str]) -> str:
    """All parts must hold: held when every part held, failed when any failed, inconclusive otherwise."""
    if verdicts and all(v == HELD for v in verdicts):
        return HELD
    return FAILED if any(v == FAILED for v in verdicts) else INCONCLUSIVE
