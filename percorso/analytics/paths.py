"""Paths and the transition graph: what contacts actually do, step by step, within a session.

A **node** is a track event's name, ``page:`` + the cleaned page path, or ``screen:`` + the screen
name. Events are ordered per contact (after identity resolution) and split into **sessions** at
gaps longer than ``session_gap_seconds``; paths never cross sessions. With ``collapse_repeats``
consecutive identical nodes count once.

``paths`` starts at the first event of each session matching ``from_step`` (or the session's first
event), ends at the first matching ``to_step`` (counting backwards when only ``to_step`` is given),
and returns Sankey-ready nodes and links with both **transitions** (how many times) and
**contacts** (how many distinct contacts). Links beyond the top N fold into ``(other)``; a path
that stops before ``max_steps`` flows into ``(end)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

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
    top_edges: int = 50
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
        import re

        for pattern, _ in self.url_rules:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise PathError("url_rules", f"{pattern!r} is not a regular expression: {exc}") from None


def _node_expr(spec: PathSpec) -> Sql:
    path = "regexp_replace(coalesce(e.page_path, ''), ?, '')"
    params: list[Any] = ["[?#].*$"]  # a parameter: `?` in SQL text is a placeholder
    for pattern, replacement in spec.url_rules:
        path = f"regexp_replace({path}, ?, ?, 'g')"
        params += [pattern, replacement]
    return Sql(
        f"CASE WHEN e.type = 'track' THEN e.event WHEN e.type = 'page' THEN 'page:' || {path} "
        "ELSE 'screen:' || coalesce(e.name, '') END",
        params,
    )


def _sessions_sql(session: Session, spec: PathSpec) -> Sql:
    """``numbered``: one row per (collapsed) event with contact, session number, position, node, flags."""
    node = _node_expr(spec)
    params: list[Any] = [*node.params]
    flags = []
    for name, cond in (("f", spec.from_step), ("t", spec.to_step)):
        if cond is None:
            flags.append(f"0 AS {name}")
        else:
            c = condition_sql(session, cond)
            flags.append(f"CASE WHEN {c.text} THEN 1 ELSE 0 END AS {name}")
            params += c.params
    text = (
        f"WITH ev AS (SELECT i.contact_id AS cid, {EPOCH} AS ts, e.message_id AS mid, {node.text} AS node, "
        f"{', '.join(flags)} FROM {RESOLVED_EVENTS} WHERE e.timestamp >= ? AND e.timestamp < ? "
        "AND e.type IN ('track', 'page', 'screen'))"
        ", gaps AS (SELECT ev.*, CASE WHEN lag(ts) OVER (PARTITION BY cid ORDER BY ts, mid) IS NULL "
        "OR ts - lag(ts) OVER (PARTITION BY cid ORDER BY ts, mid) > ? THEN 1 ELSE 0 END AS new_session FROM ev)"
        ", sessions AS (SELECT gaps.*, sum(new_session) OVER (PARTITION BY cid ORDER BY ts, mid "
        "ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS sid FROM gaps)"
    )
    params += [spec.start, spec.end, spec.session_gap_seconds]
    if spec.collapse_repeats:
        text += (
            ", kept AS (SELECT * FROM (SELECT sessions.*, lag(node) OVER (PARTITION BY cid, sid ORDER BY ts, mid) "
            "AS prev_node FROM sessions) x WHERE prev_node IS NULL OR prev_node <> node)"
        )
    else:
        text += ", kept AS (SELECT * FROM sessions)"
    text += (
        ", numbered AS (SELECT cid, sid, ts, node, f, t, row_number() OVER (PARTITION BY cid, sid ORDER BY ts, mid) "
        "AS pos FROM kept)"
    )
    return Sql(text, params)


def paths(store: Store, spec: PathSpec) -> dict[str, Any]:
    spec.check()
    n = spec.max_steps
    with store.session() as s:
        s.tune_for_analytics()
        base = _sessions_sql(s, spec)
        if spec.from_step is not None and spec.to_step is not None:
            mode = "between"
            anchors = (
                ", a1 AS (SELECT cid, sid, min(pos) AS a FROM numbered WHERE f = 1 GROUP BY cid, sid)"
                ", anchors AS (SELECT a1.cid, a1.sid, a1.a, min(x.pos) AS b FROM a1 JOIN numbered x ON x.cid = a1.cid "
                "AND x.sid = a1.sid AND x.t = 1 AND x.pos > a1.a GROUP BY a1.cid, a1.sid, a1.a)"
                ", picked AS (SELECT x.cid, x.sid, x.pos - anchors.a + 1 AS step, x.node FROM numbered x JOIN anchors "
                f"ON anchors.cid = x.cid AND anchors.sid = x.sid WHERE x.pos >= anchors.a AND x.pos <= anchors.b "
                f"AND x.pos < anchors.a + {n})"
            )
        elif spec.to_step is not None:
            mode = "to"
            anchors = (
                ", anchors AS (SELECT cid, sid, min(pos) AS b FROM numbered WHERE t = 1 GROUP BY cid, sid)"
                ", picked AS (SELECT x.cid, x.sid, x.pos - anchors.b AS step, x.node FROM numbered x JOIN anchors "
                f"ON anchors.cid = x.cid AND anchors.sid = x.sid WHERE x.pos <= anchors.b AND x.pos > anchors.b - {n})"
            )
        else:
            mode = "from" if spec.from_step is not None else "session start"
            where = "WHERE f = 1 " if spec.from_step is not None else ""
            anchors = (
                f", anchors AS (SELECT cid, sid, min(pos) AS a FROM numbered {where}GROUP BY cid, sid)"
                ", picked AS (SELECT x.cid, x.sid, x.pos - anchors.a + 1 AS step, x.node FROM numbered x JOIN anchors "
                f"ON anchors.cid = x.cid AND anchors.sid = x.sid WHERE x.pos >= anchors.a AND x.pos < anchors.a + {n})"
            )
        ends = (
            f"step < {n} OR next_node IS NOT NULL"
            if mode in ("from", "session start")
            else "next_node IS NOT NULL"
        )
        edges = s.rows(
            base.text
            + anchors
            + ", linked AS (SELECT cid, step, node, lead(node) OVER (PARTITION BY cid, sid "
            "ORDER BY step) AS next_node FROM picked) "
            f"SELECT step, node, coalesce(next_node, '{END}') AS next_node, count(*) AS transitions, "
            f"count(DISTINCT cid) AS contacts FROM linked WHERE {ends} "
            "GROUP BY 1, 2, 3 ORDER BY 4 DESC, 1, 2, 3",
            base.params,
        )
        starts = s.rows(
            base.text + anchors + " SELECT count(*), count(DISTINCT cid) FROM anchors", base.params
        )[0]
    return _sankey(edges, spec, mode, starts)


def _sankey(
    edges: list[tuple[Any, ...]], spec: PathSpec, mode: str, starts: tuple[Any, ...]
) -> dict[str, Any]:
    top = edges[: spec.top_edges]
    folded: dict[tuple[int, str, str], list[int]] = {}
    for step, node, nxt, transitions, contacts in top:
        folded[(int(step), node, nxt)] = [int(transitions), int(contacts)]
    for step, _node, _nxt, transitions, contacts in edges[spec.top_edges :]:
        key = (int(step), OTHER, OTHER)
        agg = folded.setdefault(key, [0, 0])
        agg[0] += int(transitions)
        agg[1] += int(contacts)  # an upper bound: a contact can be in several folded links
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
    with store.session() as s:
        s.tune_for_analytics()
        base = _sessions_sql(s, spec)
        rows = s.dicts(
            base.text
            + ", pairs AS (SELECT cid, node, ts, lead(node) OVER (PARTITION BY cid, sid ORDER BY pos) AS next_node, "
            "lead(ts) OVER (PARTITION BY cid, sid ORDER BY pos) AS next_ts FROM numbered) "
            ", counted AS (SELECT node AS source, next_node AS target, count(*) AS transitions, count(DISTINCT cid) AS contacts, "
            "percentile_cont(0.5) WITHIN GROUP (ORDER BY next_ts - ts) AS median_seconds FROM pairs "
            "WHERE next_node IS NOT NULL GROUP BY node, next_node) "
            "SELECT source, target, transitions, contacts, median_seconds, "
            "CAST(transitions AS DOUBLE PRECISION) / sum(transitions) OVER (PARTITION BY source) AS probability "
            "FROM counted ORDER BY transitions DESC, source, target LIMIT ?",
            [*base.params, spec.top_edges],
        )
    return [
        {
            "source": r["source"],
            "target": r["target"],
            "transitions": int(r["transitions"]),
            "contacts": int(r["contacts"]),
            "probability": round(float(r["probability"]), 4),
            "median_seconds": round(float(r["median_seconds"]), 1),
        }
        for r in rows
    ]
