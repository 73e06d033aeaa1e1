"""Counts the cases the fuzz tests send and the server errors among them.

The property-based tests call :func:`case` once per generated input and :func:`server_error`
when one got a 5xx or an exception; the suite's summary prints the totals for each fuzzer
(see ``pytest_terminal_summary`` in conftest.py), so every CI log says how many cases ran.
"""

from __future__ import annotations

from collections import Counter

CASES: Counter[str] = Counter()
SERVER_ERRORS: Counter[str] = Counter()


def case(fuzzer: str) -> None:
    CASES[fuzzer] += 1


def server_error(fuzzer: str) -> None:
    SERVER_ERRORS[fuzzer] += 1


def lines() -> list[str]:
    return [
        f"{fuzzer}: {count} cases, {SERVER_ERRORS[fuzzer]} server errors"
        for fuzzer, count in sorted(CASES.items())
    ]
