"""Regular expressions a client writes cannot stall the server (ReDoS).

A secret-key user cleans page paths with ``url_rule`` (``/v1/paths``, ``percorso journey
paths --url-rule``). Rules run on RE2, whose matching time is linear in the text, so the classic
catastrophic patterns answer at once; what RE2 cannot run (backreferences, look-arounds) is
refused with a 400 naming the rule, as is a pattern over 1,000 characters or one whose compiled
program would pass 8 MB. Python's backtracking engine would take minutes on each case below.
"""

from __future__ import annotations

import re
import time

import httpx
import pytest

from percorso.analytics.paths import PathError, url_rule

PATH = "/" + "a" * 30 + "!"  # ~2^30 steps for a backtracking engine on the patterns below
CATASTROPHIC = [r"^/(a+)+$", r"^/(a|a)*$", r"^/(a|aa)+$", r"^/(a*)*b$", r"^/(\w+\s?)+$"]


@pytest.mark.parametrize("pattern", CATASTROPHIC)
def test_catastrophic_patterns_run_in_linear_time(pattern: str) -> None:
    started = time.perf_counter()
    compiled = url_rule(pattern, "/x")
    assert compiled.sub("/x", PATH * 1000) == PATH * 1000  # no match: the path stays
    assert time.perf_counter() - started < 1.0


def _fastest(run, times: int = 3) -> float:
    best = float("inf")
    for _ in range(times):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def test_the_same_pattern_backtracks_on_pythons_engine() -> None:
    """What the rule engine protects against, by how time grows with the text rather than by a
    wall-time ratio a busy machine can upset: six more characters multiply ``re``'s work by
    2^6 = 64 (asserted: more than 8), while RE2 runs 40 characters, 2^40 steps for ``re``
    (hours), in well under a second."""
    pattern = r"^/(a+)+$"

    def backtrack(n: int) -> float:
        text = "/" + "a" * n + "!"
        return _fastest(lambda: re.sub(pattern, "/x", text))

    assert backtrack(20) > 8 * backtrack(14)
    rule = url_rule(pattern, "/x")
    text = "/" + "a" * 40 + "!"
    assert _fastest(lambda: rule.sub("/x", text)) < 0.5
    assert rule.sub("/x", text) == text


def test_paths_with_a_catastrophic_rule_answer_at_once(server) -> None:
    stamped = [
        {
            "type": "page",
            "userId": f"u{i}",
            "name": "x",
            "properties": {"path": PATH + str(i)},
            "timestamp": "2026-06-01T10:00:00Z",
        }
        for i in range(50)
    ]
    r = httpx.post(f"{server.url}/v1/batch", json={"batch": stamped}, auth=(server.write_key, ""))
    assert r.status_code == 200, r.text
    http = server.client()
    params = {"from": "2026-05-01T00:00:00Z", "to": "2026-07-01T00:00:00Z"}
    started = time.perf_counter()
    answers = [http.get("/v1/paths", params={**params, "url_rule": f"{p}=>/x"}) for p in CATASTROPHIC]
    assert [a.status_code for a in answers] == [200] * len(CATASTROPHIC), answers[0].text
    assert time.perf_counter() - started < 10
    # Meanwhile the server answers others.
    assert http.get("/health").status_code == 200


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        (r"^/(a+)\1$", "without backreferences"),
        (r"^/(?=a)a$", "look-arounds"),
        ("(" * 1001, "at most 1000 characters"),
        ("((((((a{1000}){1000}){1000}){1000}){1000}){1000})", "not a regular expression percorso can run"),
    ],
)
def test_what_re2_cannot_run_is_refused_by_name(server, pattern: str, problem: str) -> None:
    """Refused over HTTP with the reason, and refused before anything runs: the check itself
    (length, then RE2's compiler under its memory budget) takes milliseconds, not the seconds a
    compiled program of 10^18 states would. Timed in-process, so a cold server's first request
    on a busy machine does not count against it."""
    params = {"from": "2026-05-01T00:00:00Z", "to": "2026-07-01T00:00:00Z", "url_rule": f"{pattern}=>/x"}
    r = server.client().get("/v1/paths", params=params)
    assert r.status_code == 400 and problem in r.json()["message"], r.text

    def refuse() -> None:
        with pytest.raises(PathError, match=re.escape(problem)):
            url_rule(pattern, "/x")

    assert _fastest(refuse) < 0.25
