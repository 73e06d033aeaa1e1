"""Paths and the transition graph: what contacts actually do, step by step, within a session.

A **node** is a track event's name, ``page:`` + the cleaned page path, or ``screen:`` + the screen
name. Events are ordered per contact (after identity resolution) and split into **sessions** at
gaps longer than ``session_gap_seconds``; paths never cross sessions. With ``collapse_repeats``
consecutive identical nodes count once.

``paths`` starts at the first event of each session matching ``from_step`` (or the session's first
event), ends at the first matching ``to_step`` (counting backwards when only ``to_step`` is given),
and returns Sankey-ready nodes and links with both **transitions** (how many times) and
**contacts** (how many distinct contacts). To draw at most N links, each step keeps its busiest
nodes and folds the rest into that step's ``(other)`` (see :func:`fold`); a path that stops
before ``max_steps`` flows into ``(end)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import re2

from percorso.analytics.sql import EPOCH, RESOLVED_EVENTS, Sql, condition_sql
from percorso.journey.definition import Condition
from percorso.store import Store
from percorso.store.base import Session

OTHER, END = "(other)", "(end)"


class PathError(ValueError):
    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class PathSpec:
    start: datetime
    end: datetime
    from_step: Condition | None = None
    to_step: Condition | None = None
    max_steps: int = 5
    collapse_repeats: bool = True
    session_gap_seconds: int = 1800
    top_edges: int = 150
    url_rules: list[tuple[str, str]] = field(default_factory=list)  # regex → replacement on page paths

    def check(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise PathError("start", "dates need a time zone")
        if self.end <= self.start:
            raise PathError("end", "must be after start")
        if not 2 <= self.max_steps <= 20:
            raise PathError("max_steps", "between 2 and 20")
        if not 60 <= self.session_gap_seconds <= 7 * 86_400:
            raise PathError("session_gap", "between 1 minute and 7 days")
        if not 1 <= self.top_edges <= 500:
            raise PathError("top", "between 1 and 500")
        for pattern, replacement in self.url_rules:
            url_rule(pattern, replacement)


#: Longest URL rule pattern; a rule cleans paths, it does not need to be a program.
MAX_RULE_CHARS = 1000
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a bad pattern is the client's error, reported in the answer
_RE2_OPTIONS.max_mem = 8 << 20  # bytes for the compiled pattern; past it the pattern is refused
_GROUP_REFERENCE = re.compile(r"\\(?:(\d{1,2})|g<([^>]*)>|(\\)|(.?))", re.DOTALL)


def url_rule(pattern: str, replacement: str) -> Any:
    """A URL rule's pattern compiled by RE2, which runs in time linear in the path, so no rule
    can stall the server (no backtracking, hence no backreferences or look-arounds); raises
    :class:`PathError` naming what is wrong with the pattern or the replacement.

    Example::

        >>> url_rule(r"/product/\\d+", "/product/:id").sub("/product/:id", "/product/42")
        '/product/:id'
        >>> url_rule(r"/p/(\\d+)", r"\\2")  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        PathError: url_rules: the replacement refers to group 2, but '/p/(\\d+)' has 1 group
    """
    if len(pattern) > MAX_RULE_CHARS:
        raise PathError("url_rules", f"a pattern has at most {MAX_RULE_CHARS} characters, not {len(pattern)}")
    try:
        compiled = re2.compile(pattern, options=_RE2_OPTIONS)
    except re2.error as exc:
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise PathError(
            "url_rules",
            f"{pattern!r} is not a regular expression percorso can run ({reason}); RE2 syntax, without "
            "backreferences or look-arounds",
        ) from None
    groups = compiled.groups
    for number, name, _, other in _GROUP_REFERENCE.findall(replacement):
        if number and int(number) > groups:
            raise PathError(
                "url_rules",
                f"the replacement refers to group {number}, but {pattern!r} has {groups} "
                f"group{'' if groups == 1 else 's'}",
            )
        if name and not (name.isdigit() and int(name) <= groups) and name not in compiled.groupindex:
            raise PathError("url_rules", f"the replacement refers to group {name!r}, which {pattern!r} lacks")
        if other or (not number and not name and not _):
            raise PathError(
                "url_rules",
                f"the replacement {replacement!r} has a backslash that is not \\1 to \\99, \\g<name> or \\\\",
            )
    return compiled


# What names a node, before cleaning: the event of a track call, the path of a page view, the
# name of a screen.
_VALUE = (
    "CASE WHEN e.type = 'track' THEN e.event WHEN e.type = 'page' THEN coalesce(e.page_path, '') "
    "ELSE coalesce(e.name, '') END"
)
_QUERY_OR_FRAGMENT = re.compile(r"[?#]")


def _node(kind: str, value: str, rules: list[tuple[Any, str]]) -> str:
    if kind == "track":
        return value
    if kind == "screen":
        return "screen:" + value
    path = _QUERY_OR_FRAGMENT.split(value, maxsplit=1)[0]
    for pattern, replacement in rules:
        path = pattern.sub(replacement, path)
    return "page:" + path


class _Dictionary:
    """Every node of the period as a small integer, numbered in the order of the node names.

    The engine reads the distinct (type, value) pairs once; Python cleans each distinct page path
    (so URL rules cost nothing per event and use one regular-expression dialect on every engine)
    and numbers the nodes; the events are then sorted and compared as integers, and the names
    come back only for the few rows of the result. Code 0 is ``(end)``."""

    def __init__(self, session: Session, spec: PathSpec):
        distinct = session.rows(
            f"SELECT DISTINCT e.type, {_VALUE} FROM events e WHERE e.timestamp >= ? AND e.timestamp < ? "
            "AND e.type IN ('track', 'page', 'screen')",
            [spec.start, spec.end],
        )
        rules = [(url_rule(pattern, replacement), replacement) for pattern, replacement in spec.url_rules]
        raw = [(kind, value, _node(kind, value, rules)) for kind, value in distinct if value is not None]
        self.names = [END, *sorted({node for _, _, node in raw})]
        code = {name: i for i, name in enumerate(self.names)}
        self.rows = [(kind, value, code[node]) for kind, value, node in raw]

    def name(self, code: Any) -> str:
        return self.names[int(code)]


def _kept_sql(session: Session, spec: PathSpec, source: str) -> Sql:
    """CTEs ending in ``kept``: the events of the period as (cid, ts, code, f, t, ns) — ``f`` and
    ``t`` mark events matching ``from_step`` and ``to_step``, ``ns`` = 1 where a session starts —
    with consecutive repeats of a node dropped (``collapse_repeats``). Events at the same instant
    are ordered by node name, then by their flags: events alike in all of these are
    interchangeable, so every engine gives the same answer. A flag no condition sets is a
    constant added after the sorts."""
    params: list[Any] = []
    carried: list[str] = []  # the flags a condition sets, sorted and carried through pass 1
    kept: list[str] = []
    for name, condition in (("f", spec.from_step), ("t", spec.to_step)):
        if condition is None:
            kept.append(f"0 AS {name}")
            continue
        c = condition_sql(session, condition)
        carried.append(f"CASE WHEN {c.text} THEN 1 ELSE 0 END AS {name}")
        params += c.params
        kept.append(name)
    params += [spec.start, spec.end]
    flags = [name for name in ("f", "t") if name in kept]
    order = "PARTITION BY cid ORDER BY " + ", ".join(["ts", "code", *flags])
    text = (
        f"WITH d AS (SELECT * FROM {source}), "
        f"ev AS (SELECT i.contact_id AS cid, {EPOCH} AS ts, {', '.join(['d.code', *carried])} "
        f"FROM {RESOLVED_EVENTS} JOIN d ON d.kind = e.type AND d.value = {_VALUE} "
        "WHERE e.timestamp >= ? AND e.timestamp < ? AND e.type IN ('track', 'page', 'screen')), "
        f"w1 AS (SELECT {', '.join(['cid', 'ts', 'code', *flags])}, CASE WHEN lag(ts) OVER w IS NULL "
        f"OR ts - lag(ts) OVER w > {int(spec.session_gap_seconds)} THEN 1 ELSE 0 END AS ns, "
        f"lag(code) OVER w AS prev, row_number() OVER w AS pos FROM ev WINDOW w AS ({order})), "
        f"kept AS (SELECT cid, pos, ts, code, {', '.join(kept)}, ns FROM w1"
        + (" WHERE ns = 1 OR prev <> code)" if spec.collapse_repeats else ")")
    )
    return Sql(text, params)


def _anchored_sql(spec: PathSpec, mode: str) -> str:
    """CTEs after ``kept``: ``anchors`` (one row per path: where it starts, or ends in ``to``
    mode, with the codes of the nodes around it in ``c1..``) and ``links`` (cid, step, src, dst;
    dst 0 is ``(end)``)."""
    n = spec.max_steps
    cols: list[str] = []
    if mode != "session start":  # the session's number, to find the first anchor event in it
        cols.append("sum(ns) OVER (w ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS sid")
    if mode == "to":
        for j in range(1, n):
            cols += [f"lag(code, {j}) OVER w AS c{j}", f"lag(ns, {j - 1}) OVER w AS b{j}"]
    else:
        for j in range(1, n):
            cols += [f"lead(code, {j}) OVER w AS c{j}", f"lead(ns, {j}) OVER w AS b{j}"]
            if mode == "between":
                cols.append(f"lead(t, {j}) OVER w AS t{j}")
    if mode == "between":
        # a `to` event later in the same session (not necessarily within max_steps)
        cols += [
            "min(CASE WHEN t = 1 THEN ts END) OVER (w ROWS BETWEEN 1 FOLLOWING AND UNBOUNDED FOLLOWING) AS next_t",
            "min(CASE WHEN ns = 1 THEN ts END) OVER (w ROWS BETWEEN 1 FOLLOWING AND UNBOUNDED FOLLOWING) AS next_s",
        ]
    text = f", w2 AS (SELECT cid, pos, ts, code, f, t, ns, {', '.join(cols)} FROM kept WINDOW w AS (PARTITION BY cid ORDER BY pos))"
    if mode == "session start":
        text += ", anchors AS (SELECT * FROM w2 WHERE ns = 1)"
    else:
        flag = "t" if mode == "to" else "f"
        text += (
            ", firsts AS (SELECT w2.*, row_number() OVER (PARTITION BY cid, sid ORDER BY pos) AS rn "
            f"FROM w2 WHERE {flag} = 1)"
            ", anchors AS (SELECT * FROM firsts WHERE rn = 1"
            + (
                " AND next_t IS NOT NULL AND (next_s IS NULL OR next_t < next_s))"
                if mode == "between"
                else ")"
            )
        )
    # alive{j}: the path reaches the j-th node from the anchor (0 = the anchor itself) without
    # leaving the session (nor, between two steps, passing the `to` event)
    alive = ["1 = 1"]
    for j in range(1, n):
        cond = f"{alive[-1]} AND c{j} IS NOT NULL AND b{j} = 0"
        if mode == "between" and j > 1:
            cond += f" AND t{j - 1} = 0"
        alive.append(cond)
    code = ["code", *(f"c{j}" for j in range(1, n))]
    branches = []
    for j in range(n - 1):
        if mode == "to":  # the link arriving at the node j before the anchor (steps -n+1..0)
            step, source, target = -(j + 1), code[j + 1], code[j]
            where, valid = f"({alive[j + 1]})", "1"
        else:
            step, source, target = j + 1, code[j], code[j + 1]
            where = f"({alive[j]})"
            valid = f"CASE WHEN {alive[j + 1]} THEN 1 ELSE 0 END"
            if mode == "between":
                where = f"({alive[j + 1]})"  # no (end): the path stops at the `to` event
        branches.append(
            f"SELECT cid, {step} AS step, {source} AS src, CASE WHEN {valid} = 1 THEN {target} ELSE 0 END AS dst "
            f"FROM anchors WHERE {where}"
        )
    return text + ", links AS (" + " UNION ALL ".join(branches) + ")"


def paths(store: Store, spec: PathSpec) -> dict[str, Any]:
    spec.check()
    if spec.from_step is not None and spec.to_step is not None:
        mode = "between"
    elif spec.to_step is not None:
        mode = "to"
    else:
        mode = "from" if spec.from_step is not None else "session start"
    with store.session() as s:
        s.tune_for_analytics()
        nodes = _Dictionary(s, spec)
        if not nodes.rows:
            return _sankey([], spec, mode, (0, 0))
        for source, source_params in s.row_sources(
            [("kind", "TEXT"), ("value", "TEXT"), ("code", "INTEGER")], nodes.rows
        ):
            base = _kept_sql(s, spec, source)
            anchored = _anchored_sql(spec, mode)
            rows = s.rows(
                base.text
                + anchored
                + ", per_contact AS (SELECT step, src, dst, cid, count(*) AS n FROM links GROUP BY step, src, dst, cid) "
                "SELECT step, src, dst, sum(n) AS transitions, count(*) AS contacts FROM per_contact "
                "GROUP BY step, src, dst "
                "UNION ALL SELECT NULL, NULL, NULL, count(*), count(DISTINCT cid) FROM anchors",
                [*source_params, *base.params],
            )
    starts = next((r[3], r[4]) for r in rows if r[0] is None)
    edges = [
        (int(step), nodes.name(src), nodes.name(dst), int(transitions), int(contacts))
        for step, src, dst, transitions, contacts in rows
        if step is not None
    ]
    edges.sort(key=lambda e: (-e[3], e[0], e[1], e[2]))
    return _sankey(edges, spec, mode, starts)


def fold(edges: list[tuple[Any, ...]], top: int) -> dict[tuple[int, str, str], list[int]]:
    """The links to draw, at most ``top``: each step keeps its busiest nodes and folds the rest
    into one ``(other)`` node of that step, so every kept node keeps all its flow in and out (a
    link from a kept node to a folded one goes to ``(other)``). The number kept per step is the
    largest that fits in ``top`` links; ``(end)`` is never folded (so when even a single ``(other)``
    per step needs more than ``top`` links, that is what is drawn)."""
    volume: dict[tuple[int, str], int] = {}
    for step, node, nxt, transitions, _ in edges:
        volume[(step, node)] = volume.get((step, node), 0) + transitions
        volume[(step + 1, nxt)] = volume.get((step + 1, nxt), 0) + transitions
    ranked: dict[int, list[str]] = {}
    for (column, node), _n in sorted(volume.items(), key=lambda kv: (-kv[1], kv[0])):
        if node != END:
            ranked.setdefault(column, []).append(node)
    widest = max((len(v) for v in ranked.values()), default=0)
    folded: dict[tuple[int, str, str], list[int]] = {}
    for keep in range(widest, -1, -1):
        kept = {column: set(nodes[:keep]) for column, nodes in ranked.items()}
        folded = {}
        for step, node, nxt, transitions, contacts in edges:
            source = node if node in kept.get(step, ()) else OTHER
            target = nxt if nxt == END or nxt in kept.get(step + 1, ()) else OTHER
            agg = folded.setdefault((int(step), source, target), [0, 0])
            agg[0] += int(transitions)
            agg[1] += int(contacts)  # for a folded link, an upper bound (a contact may be in several)
        if len(folded) <= top:
            break
    return folded


def _sankey(
    edges: list[tuple[Any, ...]], spec: PathSpec, mode: str, starts: tuple[Any, ...]
) -> dict[str, Any]:
    folded = fold(edges, spec.top_edges)
    nodes: dict[str, dict[str, Any]] = {}
    links = []
    for (step, node, nxt), (transitions, contacts) in sorted(
        folded.items(), key=lambda kv: (-kv[1][0], kv[0])
    ):
        source, target = f"{step}:{node}", f"{step + 1}:{nxt}"
        nodes.setdefault(source, {"id": source, "step": step, "label": node})
        nodes.setdefault(target, {"id": target, "step": step + 1, "label": nxt})
        links.append({"source": source, "target": target, "transitions": transitions, "contacts": contacts})
    return {
        "mode": mode,
        "period": {"start": spec.start.isoformat(), "end": spec.end.isoformat()},
        "sessions": int(starts[0]),
        "contacts": int(starts[1]),
        "nodes": sorted(nodes.values(), key=lambda x: (x["step"], x["label"])),
        "links": links,
        "counting": {
            "transitions": "how many times a session went from source to target",
            "contacts": "distinct contacts who did; for folded (other) links an upper bound",
        },
    }


def transitions(
    store: Store,
    start: datetime,
    end: datetime,
    *,
    top: int = 50,
    session_gap_seconds: int = 1800,
    collapse_repeats: bool = True,
) -> list[dict[str, Any]]:
    """Each ``A → B`` of consecutive nodes within sessions: count, probability among A's next
    steps, median seconds between, distinct contacts."""
    spec = PathSpec(
        start=start,
        end=end,
        session_gap_seconds=session_gap_seconds,
        collapse_repeats=collapse_repeats,
        top_edges=max(1, min(top, 500)),
    )
    spec.check()
    rows: list[dict[str, Any]] = []
    with store.session() as s:
        s.tune_for_analytics()
        nodes = _Dictionary(s, spec)
        for source, source_params in s.row_sources(
            [("kind", "TEXT"), ("value", "TEXT"), ("code", "INTEGER")], nodes.rows
        ):
            base = _kept_sql(s, spec, source)
            rows = s.dicts(
                base.text
                + ", pairs AS (SELECT cid, code, ts, lead(code) OVER w AS next_code, lead(ts) OVER w AS next_ts, "
                "lead(ns) OVER w AS next_ns FROM kept WINDOW w AS (PARTITION BY cid ORDER BY pos)) "
                ", counted AS (SELECT code AS source, next_code AS target, count(*) AS transitions, "
                "count(DISTINCT cid) AS contacts, percentile_cont(0.5) WITHIN GROUP (ORDER BY next_ts - ts) "
                "AS median_seconds FROM pairs WHERE next_code IS NOT NULL AND next_ns = 0 GROUP BY code, next_code) "
                "SELECT source, target, transitions, contacts, median_seconds, "
                "CAST(transitions AS DOUBLE PRECISION) / sum(transitions) OVER (PARTITION BY source) AS probability "
                "FROM counted ORDER BY transitions DESC, source, target LIMIT ?",
                [*source_params, *base.params, spec.top_edges],
            )
    return [
        {
            "source": nodes.name(r["source"]),
            "target": nodes.name(r["target"]),
            "transitions": int(r["transitions"]),
            "contacts": int(r["contacts"]),
            "probability": round(float(r["probability"]), 4),
            "median_seconds": round(float(r["median_seconds"]), 1),
        }
        for r in rows
    ]
