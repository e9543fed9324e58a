"""How sure a measured rate or mean is, and whether a difference between two candidates holds beyond the noise.

Every rate a comparison or an eval reports carries its sample size and a 95% interval, and a winner is called only
where the difference's interval excludes zero; otherwise the report says there is no clear winner and about how
many prompts would settle it at the rates seen.

    wilson(3, 5)                          # Interval(value=0.6, low=0.23, high=0.88, n=5)
    rate_difference(3, 5, 0, 5).settled   # False: 5 prompts cannot tell 60% from 0%
    prompts_to_settle(0.6, 0.0)           # about how many prompts per candidate would

Rates use Wilson's score interval (sound at 0%, 100% and small n, where the normal one is not), differences of
rates Newcombe's hybrid score interval built from the two Wilson intervals, and means the normal interval of the
mean (`mean_interval`), which is what a check with continuous values (similarity, words) needs.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Sequence

Z95 = 1.959963984540054  # the two-sided 95% quantile of the standard normal


@dataclass(frozen=True)
class Interval:
    value: float | None
    low: float | None
    high: float | None
    n: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Difference:
    """`a − b` with its 95% interval; `settled` when the interval excludes zero (the difference holds)."""

    value: float
    low: float
    high: float

    @property
    def settled(self) -> bool:
        return self.low > 0 or self.high < 0


def wilson(successes: int, n: int, z: float = Z95) -> Interval:
    """The share `successes / n` with Wilson's score interval; no value without a sample."""
    if n <= 0:
        return Interval(None, None, None, 0)
    if not 0 <= successes <= n:
        raise ValueError(f"{successes} successes out of {n}")
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # At 0% and 100% the bound is exactly 0 or 1; the formula leaves rounding dust there.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return Interval(p, low, high, n)


def rate_difference(successes_a: int, n_a: int, successes_b: int, n_b: int, z: float = Z95) -> Difference:
    """Newcombe's hybrid score interval for the difference of two independent shares (method 10 in his 1998
    paper): conservative for the paired answers of one prompt set, never too eager to call a winner."""
    a, b = wilson(successes_a, n_a, z), wilson(successes_b, n_b, z)
    if a.value is None or b.value is None:
        raise ValueError("a difference needs a sample on both sides")
    d = a.value - b.value
    below = math.sqrt((a.value - a.low) ** 2 + (b.high - b.value) ** 2)
    above = math.sqrt((a.high - a.value) ** 2 + (b.value - b.low) ** 2)
    return Difference(d, d - below, d + above)


def mean_interval(values: Sequence[float], z: float = Z95) -> Interval:
    """The mean of `values` with the normal interval of the mean (one value: no width can be known)."""
    values = [float(v) for v in values]
    if not values:
        return Interval(None, None, None, 0)
    mean = statistics.fmean(values)
    if len(values) == 1:
        return Interval(mean, None, None, 1)
    half = z * statistics.stdev(values) / math.sqrt(len(values))
    return Interval(mean, mean - half, mean + half, len(values))


def mean_difference(a: Sequence[float], b: Sequence[float], z: float = Z95) -> Difference:
    """Welch's interval for the difference of two means (normal quantile; the samples here are tens of answers)."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError("a difference of means needs two values on each side")
    d = statistics.fmean(a) - statistics.fmean(b)
    half = z * math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    return Difference(d, d - half, d + half)


def prompts_to_settle(rate_a: float, rate_b: float, z: float = Z95) -> int | None:
    """About how many prompts per candidate would make the difference between these two shares hold at 95%, if
    the shares stayed as measured; None when they are equal (no number of prompts would)."""
    d = abs(rate_a - rate_b)
    if d == 0:
        return None
    # Both shares at 0% or 100% have no variance to estimate; a Wilson interval still needs about 2z² answers.
    variance = max(rate_a * (1 - rate_a) + rate_b * (1 - rate_b), 1e-9)
    return max(math.ceil(z * z * variance / (d * d)), math.ceil(2 * z * z))


def means_to_settle(a: Sequence[float], b: Sequence[float], z: float = Z95) -> int | None:
    """The same for two means, from the spread of the values measured."""
    if len(a) < 2 or len(b) < 2:
        return None
    d = abs(statistics.fmean(a) - statistics.fmean(b))
    if d == 0:
        return None
    variance = statistics.variance(a) + statistics.variance(b)
    return max(2, math.ceil(z * z * variance / (d * d)))
