"""One-sided significance of a difference of shares, shared by the pain-point detectors."""

from __future__ import annotations

import math


def z_test(x1: int, n1: int, x2: int, n2: int) -> float:
    """z for 'proportion 1 is higher than proportion 2' (pooled two-proportion test)."""
    if n1 == 0 or n2 == 0:
        return 0.0
    p = (x1 + x2) / (n1 + n2)
    if p in (0.0, 1.0):
        return 0.0
    se = math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
    return (x1 / n1 - x2 / n2) / se


def p_value(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2))
