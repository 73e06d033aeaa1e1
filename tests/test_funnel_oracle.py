"""Funnels against an independent reference: the rules of docs/analytics.md#funnels written again
in plain Python, over random event logs (hypothesis), on both stores, in every order mode, with
random windows, exclusion ranges and judging times. Each step's contacts, in-progress, excluded
and dropped counts must be equal.

The logs are built so that the reference never has to guess what the docs leave open: each
contact's events have distinct timestamps, and the step and exclusion events have distinct names.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from percorso.analytics.funnel import Exclusion, FunnelSpec, Step, funnel
from percorso.events import parse_message
from percorso.journey.definition import Condition
from percorso.store import Store

T0 = datetime(2026, 4, 1, tzinfo=UTC)
MINUTE = 60
START, END = 6 * 60 * MINUTE, 36 * 60 * MINUTE  # the period: hours 6 to 36 of the log
STEPS = ["A", "B", "C", "D"]
NAMES = [*STEPS, "X", "E"]  # X: another tracked event (breaks a strict chain); E: the excluded one


@dataclass(frozen=True, order=True)
class Ev:
    ts: int  # seconds from T0
    type: str  # track | page
    name: str


def log_of(minutes: list[int], kinds: list[tuple[str, str]]) -> list[Ev]:
    return sorted(Ev(m * MINUTE, t, n) for m, (t, n) in zip(minutes, kinds, strict=False))


# Dense logs, mostly step events, bunched in time: chains, repeats, reversals and interruptions
# are common, so every rule is exercised in most examples.
kinds = st.tuples(
    st.sampled_from(["track"] * 7 + ["page"]), st.sampled_from([*STEPS, *STEPS, "A", "X", "E", "E"])
)
contact_log = st.builds(
    log_of,
    st.integers(5 * 60, 30 * 60).flatmap(  # a start minute, then events within the next 8 h
        lambda at: st.lists(st.integers(at, at + 8 * 60), min_size=0, max_size=16, unique=True)
    ),
    st.lists(kinds, min_size=16, max_size=16),
)


@dataclass(frozen=True)
class Case:
    logs: list[list[Ev]]
    n: int
    order: str
    window: int
    exclusion: tuple[int, int] | None
    as_of: int


cases = st.builds(
    Case,
    logs=st.lists(contact_log, min_size=1, max_size=25),
    n=st.integers(2, 4),
    order=st.sampled_from(["ordered", "strict", "any"]),
    window=st.integers(10, 6 * 60).map(lambda m: m * MINUTE + 30),  # never on a whole minute
    exclusion=st.none() | st.tuples(st.integers(1, 3), st.integers(2, 4)),
    as_of=st.integers(START, 40 * 60 * MINUTE).map(lambda s: s + 15),
).filter(lambda c: c.exclusion is None or (c.exclusion[0] < c.exclusion[1] <= c.n))


def matches(e: Ev, name: str) -> bool:
    return e.type == "track" and e.name == name


def reference(case: Case) -> list[dict[str, int]]:
    """Per step: contacts, and (but the last) in_progress, excluded, dropped."""
    n, w = case.n, case.window
    steps = STEPS[:n]
    reached = [0] * n
    open_, excluded = [0] * n, [0] * n
    for log in case.logs:
        evs = [e for e in log if START <= e.ts < END + w]  # what the store scans
        entry = next((e for e in evs if matches(e, steps[0]) and e.ts < END), None)
        if entry is None:
            continue
        t1 = entry.ts
        t: list[int | None] = [t1] + [None] * (n - 1)
        brk = None
        if case.order == "ordered":
            for k in range(1, n):
                prev = t[k - 1]
                found = [
                    e.ts for e in evs if matches(e, steps[k]) and prev is not None and prev < e.ts <= t1 + w
                ]
                if not found:
                    break
                t[k] = min(found)
        elif case.order == "strict":
            considered = [e for e in evs if e.type == "track"]  # every track event, steps included
            pos = considered.index(entry)
            for k in range(1, n):
                after = [
                    (i, e)
                    for i, e in enumerate(considered)
                    if i > pos and not (matches(e, steps[k - 1]) and not matches(e, steps[k]))
                ]
                if not after:
                    break
                i, e = after[0]
                prev = t[k - 1]
                assert prev is not None
                if matches(e, steps[k]) and prev < e.ts <= t1 + w:
                    t[k], pos = e.ts, i
                else:
                    brk = k  # broken after step k (1-based)
                    break
        else:
            first = {}
            for k in range(1, n):
                found = [e.ts for e in evs if matches(e, steps[k]) and t1 < e.ts <= t1 + w]
                first[k] = min(found) if found else None
            for k in range(1, n):
                got = [first[j] for j in range(1, k + 1)]
                t[k] = max(got) if all(g is not None for g in got) else None  # type: ignore[type-var]
        xat = None
        if case.exclusion is not None:
            after_step, before_step = case.exclusion
            for k in range(2, n + 1):  # an excluded event between step k-1 and step k
                if not (after_step <= k - 1 and k <= before_step):
                    continue
                prev, this = t[k - 2], t[k - 1]
                if prev is None:
                    continue
                if any(
                    matches(e, "E") and e.ts > prev and (e.ts < this if this is not None else e.ts <= t1 + w)
                    for e in evs
                ):
                    xat = k - 1
                    break
        if xat is not None:
            t = [v if k < xat else None for k, v in enumerate(t)]
            brk = None
        for k in range(n):
            if t[k] is not None:
                reached[k] += 1
        for k in range(n - 1):
            if t[k] is not None and t[k + 1] is None:
                if xat == k + 1:
                    excluded[k] += 1
                elif brk is None and t1 + w > case.as_of:
                    open_[k] += 1
    out = []
    for k in range(n):
        row = {"contacts": reached[k]}
        if k < n - 1:
            row.update(
                in_progress=open_[k],
                excluded=excluded[k],
                dropped=reached[k] - reached[k + 1] - open_[k] - excluded[k],
            )
        out.append(row)
    return out


def load(store: Store, classifier, case: Case) -> None:
    events = []
    for c, log in enumerate(case.logs):
        for i, e in enumerate(log):
            message: dict[str, Any] = {
                "type": e.type,
                "messageId": f"c{c}-{i}",
                "userId": f"c{c}",
                "timestamp": (T0 + timedelta(seconds=e.ts)).isoformat(),
            }
            if e.type == "track":
                message["event"] = e.name
            else:
                message["name"] = e.name
            events.append(
                parse_message(
                    msgspec.json.encode(message), received_at=T0 + timedelta(days=5), classifier=classifier
                )
            )
    if events:
        store.ingest(events)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=cases)
def test_funnels_match_the_reference(store: Store, classifier, case: Case) -> None:
    store.reset()
    load(store, classifier, case)
    exclusions: tuple[Exclusion, ...] = ()
    if case.exclusion is not None:
        exclusions = (Exclusion(Step("E", Condition(event="E")), case.exclusion[0], case.exclusion[1]),)
    spec = FunnelSpec(
        steps=[Step(name, Condition(event=name)) for name in STEPS[: case.n]],
        start=T0 + timedelta(seconds=START),
        end=T0 + timedelta(seconds=END),
        window_seconds=case.window,
        order=case.order,
        exclusions=exclusions,
        as_of=T0 + timedelta(seconds=case.as_of),
    )
    result = funnel(store, spec, trend=False, distribution=False)["total"]["steps"]
    got = [
        {k: v for k, v in step.items() if k in ("contacts", "in_progress", "excluded", "dropped")}
        for step in result
    ]
    assert got == reference(case)
