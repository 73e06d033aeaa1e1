"""The ingest benchmark's proof that every acknowledged request was stored, each message once,
tells a complete run from one that lost, split or doubled a request (benchmarks/__main__.py)."""

from __future__ import annotations

from typing import Any

from benchmarks.__main__ import check_acknowledged

BATCH, CONNECTIONS = 5, 8
#: wrk generated 20 requests of 5 messages (the first never sent), 12 were answered.
RUN: dict[str, Any] = {
    "threads": 1,
    "generated_messages": 100,
    "requests": 12,
    "non_2xx": 0,
    "socket_errors": 0,
}


def ids(requests: range) -> list[str]:
    return [f"measure-1-{7 * c + 1}" for r in requests for c in range((r - 1) * BATCH + 1, r * BATCH + 1)]


def check(stored: list[str], **run: Any) -> dict[str, Any]:
    return check_acknowledged(stored, "measure", {**RUN, **run}, BATCH, CONNECTIONS)


def test_every_sent_request_stored_passes() -> None:
    result = check(ids(range(2, 21)))
    assert result["ok"] and result["requests_sent"] == 19 and result["acknowledged_missing"] == 0


def test_requests_in_flight_at_the_end_may_be_missing() -> None:
    # Requests 13..20 are the connections' last ones; 12 answered means request 13 was answered.
    assert check(ids(range(2, 14)))["ok"]
    assert not check(ids(range(2, 13)))["ok"]


def test_a_lost_early_request_fails() -> None:
    result = check(ids(range(3, 21)))
    assert not result["ok"] and result["acknowledged_missing"] == 1


def test_a_partly_stored_request_fails() -> None:
    result = check(ids(range(2, 21))[:-2])
    assert not result["ok"] and result["requests_stored_partly"] == 1


def test_a_message_stored_twice_or_never_sent_fails() -> None:
    doubled = check([*ids(range(2, 21)), ids(range(2, 3))[0]])
    assert not doubled["ok"] and doubled["ids_stored_twice"] == 1
    unknown = check([*ids(range(2, 21)), "measure-1-9", "measure-1-7001"])
    assert not unknown["ok"] and unknown["unknown_ids"] == 2
    assert not check(ids(range(1, 21)))["ok"]  # wrk's probe request is never sent


def test_errors_fail_the_check() -> None:
    assert not check(ids(range(2, 21)), non_2xx=1)["ok"]
    assert not check(ids(range(2, 21)), socket_errors=1)["ok"]
