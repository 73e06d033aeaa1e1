"""The statistics of an experiment, from scipy and statsmodels (each checked in tests against a
published worked example or an exact formula):

* the difference of two conversion rates with its 95% interval (Newcombe's hybrid score
  interval, statsmodels ``confint_proportions_2indep``) and the relative uplift's interval
  (log-adjusted ratio), with the score test's two-sided p-value;
* the sample-ratio mismatch check: a chi-square test of the arms' sizes against the split the
  experiment asked for (scipy ``chisquare``); a p-value under 0.001 means the assignment is broken;
* the probability that each arm is best, from Beta(1 + conversions, 1 + misses) posteriors
  (scipy ``beta``, integrated with ``quad``);
* the minimum detectable effect at the current sample size, and the sample size needed for an
  effect (statsmodels ``NormalIndPower`` on Cohen's h), at 5% two-sided and 80% power.

These are fixed-horizon tests: read them at the planned sample size (``needed_per_arm``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from scipy import stats
from scipy.integrate import quad
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_effectsize,
    test_proportions_2indep,
)

ALPHA = 0.05
POWER = 0.8
SRM_ALPHA = 0.001


@dataclass(frozen=True)
class Arm:
    name: str
    converted: int
    exposed: int

    @property
    def rate(self) -> float | None:
        return self.converted / self.exposed if self.exposed else None


@dataclass(frozen=True)
class Comparison:
    """``treatment`` against ``control``: the difference of rates (treatment - control) and the
    ratio, each with a 95% interval, and the two-sided p-value."""

    difference: float
    difference_interval: tuple[float, float]
    ratio: float | None
    ratio_interval: tuple[float, float] | None
    p_value: float


def compare(control: Arm, treatment: Arm) -> Comparison | None:
    """None when either arm has no one in it."""
    if not control.exposed or not treatment.exposed:
        return None
    x1, n1, x0, n0 = treatment.converted, treatment.exposed, control.converted, control.exposed
    low, high = confint_proportions_2indep(x1, n1, x0, n0, method="newcomb", compare="diff")
    ratio = ratio_interval = None
    if x0 > 0:
        ratio = (x1 / n1) / (x0 / n0)
        r_low, r_high = confint_proportions_2indep(x1, n1, x0, n0, method="log-adjusted", compare="ratio")
        ratio_interval = (float(r_low), float(r_high))
    if x1 + x0 in (0, n1 + n0):  # everyone or no one converted: nothing to tell apart
        p = 1.0
    else:
        p = float(test_proportions_2indep(x1, n1, x0, n0, method="score").pvalue)
    return Comparison(x1 / n1 - x0 / n0, (float(low), float(high)), ratio, ratio_interval, p)


def sample_ratio_p(observed: Sequence[int], weights: Sequence[float]) -> float | None:
    """The chi-square p-value of the arms' sizes against the weights they were assigned with;
    None with fewer than two arms or no one in them."""
    total = sum(observed)
    if len(observed) < 2 or total == 0:
        return None
    share = sum(weights)
    expected = [total * w / share for w in weights]
    return float(stats.chisquare(list(observed), expected).pvalue)


def probability_best(arms: Sequence[Arm]) -> list[float]:
    """For each arm, the posterior probability that its rate is the highest (uniform priors):
    the integral of its Beta density times the others' distribution functions."""
    if not arms:
        return []
    posteriors = [stats.beta(1 + a.converted, 1 + a.exposed - a.converted) for a in arms]
    means = sorted({float(p.mean()) for p in posteriors})
    out = []
    for i, mine in enumerate(posteriors):
        others = [p for j, p in enumerate(posteriors) if j != i]

        def density(x: float, mine: Any = mine, others: list[Any] = others) -> float:
            value = float(mine.pdf(x))
            for other in others:
                value *= float(other.cdf(x))
            return value

        area, _ = quad(density, 0.0, 1.0, points=means, limit=200)
        out.append(area)
    total = sum(out)
    return [p / total for p in out] if total > 0 else [1.0 / len(arms)] * len(arms)


def _rate_at(h: float, base: float) -> float:
    """The rate that is Cohen's ``h`` above ``base``."""
    angle = 2 * math.asin(math.sqrt(base)) + h
    return min(1.0, math.sin(min(angle, math.pi) / 2) ** 2)


def minimum_detectable_effect(base_rate: float, per_arm: int) -> float | None:
    """The smallest rise over ``base_rate`` that ``per_arm`` people in each of two arms detect
    with 80% power at 5% two-sided (absolute, in rate); None when it cannot be told."""
    if per_arm < 2 or not 0 < base_rate < 1:
        return None
    h = NormalIndPower().solve_power(nobs1=per_arm, alpha=ALPHA, power=POWER, ratio=1.0)
    return _rate_at(float(h), base_rate) - base_rate


def needed_per_arm(base_rate: float, rate: float) -> int | None:
    """People per arm to tell ``rate`` from ``base_rate`` with 80% power at 5% two-sided."""
    if not 0 < base_rate < 1 or not 0 <= rate <= 1 or rate == base_rate:
        return None
    h = abs(float(proportion_effectsize(rate, base_rate)))
    return math.ceil(NormalIndPower().solve_power(effect_size=h, alpha=ALPHA, power=POWER, ratio=1.0))
