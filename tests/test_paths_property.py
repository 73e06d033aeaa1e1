"""Paths and transitions against a plain-Python reading of their definition (docs/analytics.md),
on random event sequences with ties, repeats, query strings and session gaps, on both engines.

Each example writes its events into its own day, with its own visitors, so one store serves the
whole run."""

from __future__ import annotations

import itertools
import re
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from percorso.analytics.funnel import parse_step
from percorso.analytics.paths import END, PathSpec, paths, transitions
from percorso.channels import ChannelClassifier, load_rules
from percorso.collect.loader import load_messages
from percorso.events import Limits
from percorso.store import Store

DAY0 = datetime(2016, 1, 1, tzinfo=UTC)  # one day per example: room for thousands before today
GAP = 1800
RULES = [(r"^/p/[0-9]+$", "/p/:id")]
NODES = [
    "Viewed",
    "Added",
    "Bought",
    "page:/",
    "page:/p/1?x=1",
    "page:/p/2#top",
    "page:/about",
    "screen:Home",
]
_day = itertools.count(1)

# one event: (visitor 0-2, minute 0-200, node index)
events_strategy = st.lists(
    st.tuples(st.integers(0, 2), st.integers(0, 200), st.integers(0, len(NODES) - 1)), min_size=1, max_size=40
)


def _message(day: datetime, n: int, visitor: int, minute: int, node: str) -> dict[str, Any]:
    m: dict[str, Any] = {
        "messageId": f"{day.date()}-{n}",
        "anonymousId": f"{day.date()}-v{visitor}",
        "timestamp": (day + timedelta(minutes=minute)).isoformat(),
    }
    if node.startswith("page:"):
        m.update(type="page", name="Page", context={"page": {"path": node.removeprefix("page:")}})
    elif node.startswith("screen:"):
        m.update(type="screen", name=node.removeprefix("screen:"))
    else:
        m.update(type="track", event=node)
    return m


def _clean(node: str, rules: list[tuple[str, str]]) -> str:
    if not node.startswith("page:"):
        return node
    path = re.split(r"[?#]", node.removeprefix("page:"), maxsplit=1)[0]
    for pattern, replacement in rules:
        path = re.sub(pattern, replacement, path)
    return "page:" + path


def _sessions(
    events: list[tuple[int, int, int]],
    collapse: bool,
    flags: tuple[str | None, str | None],
    rules: list[tuple[str, str]],
) -> list[tuple[int, list[tuple[int, str, bool, bool]]]]:
    """(visitor, [(minute, node, is_from, is_to)]) per session, in the documented order."""
    by_visitor: dict[int, list[tuple[int, str, bool, bool]]] = defaultdict(list)
    for visitor, minute, index in events:
        raw = NODES[index]
        node = _clean(raw, rules)
        by_visitor[visitor].append((minute, node, raw == flags[0], raw == flags[1]))
    out = []
    for visitor, rows in sorted(by_visitor.items()):
        # same instant: by node name, then by the flags (rows alike in all of these are interchangeable)
        rows.sort(key=lambda r: (r[0], r[1], r[2], r[3]))
        session: list[tuple[int, str, bool, bool]] = []
        previous: int | None = None  # the gap runs from the previous event, repeats included
        for row in rows:
            if previous is not None and row[0] - previous > GAP // 60:
                out.append((visitor, session))
                session = []
            previous = row[0]
            if collapse and session and session[-1][1] == row[1]:
                continue
            session.append(row)
        out.append((visitor, session))
    return out


def _reference_links(
    events: list[tuple[int, int, int]],
    mode: str,
    n: int,
    collapse: bool,
    flags: tuple[str | None, str | None],
) -> tuple[int, int, dict[tuple[str, str], tuple[int, int]]]:
    transitions_: Counter[tuple[str, str]] = Counter()
    contacts: dict[tuple[str, str], set[int]] = defaultdict(set)
    anchors: list[int] = []
    for visitor, session in _sessions(events, collapse, flags, RULES):
        nodes = [r[1] for r in session]
        if mode == "session start":
            a: int | None = 0
        elif mode in ("from", "between"):
            a = next((i for i, r in enumerate(session) if r[2]), None)
        else:
            a = next((i for i, r in enumerate(session) if r[3]), None)
        if a is None:
            continue
        if mode == "between":
            b = next((i for i in range(a + 1, len(session)) if session[i][3]), None)
            if b is None:
                continue
            path = nodes[a : min(b + 1, a + n)]
            steps = [(f"{k + 1}:{path[k]}", f"{k + 2}:{path[k + 1]}") for k in range(len(path) - 1)]
        elif mode == "to":
            path = nodes[max(0, a - n + 1) : a + 1]
            first = -(len(path) - 1)
            steps = [
                (f"{first + k}:{path[k]}", f"{first + k + 1}:{path[k + 1]}") for k in range(len(path) - 1)
            ]
        else:
            path = nodes[a : a + n]
            steps = [(f"{k + 1}:{path[k]}", f"{k + 2}:{path[k + 1]}") for k in range(len(path) - 1)]
            if len(path) < n:
                steps.append((f"{len(path)}:{path[-1]}", f"{len(path) + 1}:{END}"))
        anchors.append(visitor)
        for link in steps:
            transitions_[link] += 1
            contacts[link].add(visitor)
    links = {link: (count, len(contacts[link])) for link, count in transitions_.items()}
    return len(anchors), len(set(anchors)), links


def _load(store: Store, events: list[tuple[int, int, int]]) -> datetime:
    day = DAY0 + timedelta(days=next(_day))
    messages = [_message(day, i, v, m, NODES[k]) for i, (v, m, k) in enumerate(events)]
    report = load_messages(
        store, enumerate(messages), classifier=ChannelClassifier(load_rules()), limits=Limits()
    )
    assert report.rejected == []
    return day


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    events=events_strategy,
    mode=st.sampled_from(["session start", "from", "to", "between"]),
    n=st.integers(2, 5),
    collapse=st.booleans(),
)
def test_paths_follow_their_definition(store: Store, events, mode, n, collapse):
    day = _load(store, events)
    flags = (
        "Viewed" if mode in ("from", "between") else None,
        "Bought" if mode in ("to", "between") else None,
    )
    spec = PathSpec(
        start=day,
        end=day + timedelta(days=1),
        from_step=parse_step(flags[0]).condition if flags[0] else None,
        to_step=parse_step(flags[1]).condition if flags[1] else None,
        max_steps=n,
        collapse_repeats=collapse,
        top_edges=500,
        url_rules=RULES,
    )
    result = paths(store, spec)
    sessions, contacts, expected = _reference_links(events, mode, n, collapse, flags)
    got = {
        (link["source"], link["target"]): (link["transitions"], link["contacts"]) for link in result["links"]
    }
    assert (result["mode"], result["sessions"], result["contacts"]) == (mode, sessions, contacts)
    assert got == expected


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=events_strategy, collapse=st.booleans())
def test_transitions_follow_their_definition(store: Store, events, collapse):
    day = _load(store, events)
    pairs: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
    for visitor, session in _sessions(events, collapse, (None, None), []):  # transitions() has no URL rules
        for (m1, a, *_), (m2, b, *_) in itertools.pairwise(session):
            pairs[(a, b)].append((visitor, (m2 - m1) * 60))
    out_of: Counter[str] = Counter()
    for (a, _), seen in pairs.items():
        out_of[a] += len(seen)
    rows = transitions(
        store, day, day + timedelta(days=1), top=500, session_gap_seconds=GAP, collapse_repeats=collapse
    )
    got = {(r["source"], r["target"]): r for r in rows}
    assert set(got) == set(pairs)
    for (a, b), seen in pairs.items():
        gaps = sorted(s for _, s in seen)
        middle = len(gaps) // 2
        median = gaps[middle] if len(gaps) % 2 else (gaps[middle - 1] + gaps[middle]) / 2
        row = got[(a, b)]
        assert (row["transitions"], row["contacts"]) == (len(seen), len({v for v, _ in seen}))
        assert row["median_seconds"] == median
        assert row["probability"] == round(len(seen) / out_of[a], 4)
