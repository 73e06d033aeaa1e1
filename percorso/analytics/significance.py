"""What the pain-point detectors share: their thresholds, and the one-sided significance of a
difference of shares."""

from __future__ import annotations

import math
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    """A finding is reported when ``z >= min_z`` and the effect is at least ``min_effect`` (1.5x
    for times), with ``min_contacts`` on each side; segments over ``dimensions``."""

    min_z: float = 4.0
    min_effect: float = 0.05
    min_slow_ratio: float = 1.5
    min_contacts: int = 30
    #: the segments' dimensions; None: found in the data (see incidents.candidate_dimensions)
    dimensions: tuple[str, ...] | None = None
    #: the false discovery rate allowed over the series the incident scan tests
    fdr: float = 0.05


def z_test(x1: int, n1: int, x2: int, n2: int) -> float:
    """z for 'proportion 1 is higher than proportion 2' (pooled two-proportion test)."""
    if n1 == 0 or n2 == 0:
        return 0.0
    p = (x1 + x2) / (n1 + n2)
    if p in (0.0, 1.0):
        return 0.0
    se = math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
    return (x1 / n1 - x2 / n2) / se


#: How many cells the detectors compared in one search for pain points (set by the search, for
#: Benjamini-Hochberg over all of them).
TESTS: ContextVar[list[int] | None] = ContextVar("painpoint_tests", default=None)


def tested(z: float) -> float:
    """``z``, counted as one cell tested when a search for pain points is under way."""
    counter = TESTS.get()
    if counter is not None:
        counter[0] += 1
    return z


def tested_z(x1: int, n1: int, x2: int, n2: int) -> float:
    """:func:`z_test`, counted as one cell tested."""
    return tested(z_test(x1, n1, x2, n2))


def p_value(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2))
