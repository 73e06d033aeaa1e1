"""Funnels: how many contacts go from step to step within a conversion window.

Semantics (the same on every engine, because it is one SQL text):

* A contact enters the funnel with their **first** step-1 event in the period; the conversion
  window runs from that event. Contacts are counted after identity resolution: an anonymous
  visitor who identifies between steps is one contact and does not drop off.
* ``order`` says how the later steps count:

  ``ordered`` (default) each step counts with the first matching event strictly after the
              previous step; anything may happen in between;
  ``strict``  the step must be the contact's very next *considered* event after the previous
              step: considered are the events matching a step of the funnel and every ``track``
              event the contact made (pages, screens, identify calls and the events percorso
              records for its own actions — library ``percorso-automation`` — are not). Repeats
              of the step just reached are skipped (a reload does not break the chain);
  ``any``     each later step counts with its first event within the window after entry, in
              any order; step k is reached when steps 2..k have all been done, at the time the
              last of them was.

* ``unit`` says what is counted:

  ``contacts`` (default) each contact once, entering with their first step-1 event in the period;
  ``sessions`` each visit once (a contact's events without a gap longer than ``session_gap``,
              30 minutes by default), entering with the visit's first step-1 event; later steps
              count only inside the same visit;
  ``attempts`` every step-1 event in the period starts an attempt, which lasts until the
              contact's next step-1 event (or the window's end): later steps count only inside it.

  Whatever the unit, the conversion window runs from the entry and identities are resolved first.

* **Exclusion steps** (as in Mixpanel and Amplitude): a contact who does the excluded event
  after reaching step k and before reaching step k+1 (or before the window closes, when they
  never reach it), for a k inside the exclusion's range, counts up to step k and is then
  *excluded* from conversion — reported apart from those who dropped.
* A contact who has not reached the next step but whose window is still open (as of ``as_of``)
  is **in progress**, reported apart from those who **dropped**. In ``strict`` mode a contact
  whose next considered event was not the next step has dropped even inside the window.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from percorso.analytics.sql import CUSTOMER_EVENT, EPOCH, RESOLVED_EVENTS, Sql, any_of, condition_sql
from percorso.journey.definition import Condition, Journey, Name
from percorso.store import Store
from percorso.store.base import Session

MAX_STEPS = 20
MAX_EXCLUSIONS = 10
ORDERS = ("ordered", "strict", "any")
UNITS = ("contacts", "sessions", "attempts")
SESSION_GAP = 30 * 60  # a visit ends after this long without an event
# The platform an event came from, by the tracking library that sent it.
PLATFORM = (
    "CASE WHEN e.library LIKE '%ios%' OR e.library LIKE '%swift%' THEN 'ios' "
    "WHEN e.library LIKE '%android%' OR e.library LIKE '%kotlin%' THEN 'android' "
    "WHEN e.library IN ('analytics.js', 'analytics-next', 'percorso.js') OR e.library LIKE '%browser%' THEN 'web' "
    "ELSE 'other' END"
)
WEEK_OFFSET = 4 * 86_400  # 1970-01-01 was a Thursday; weeks start on Monday
BUCKETS = ((3600, "< 1h"), (6 * 3600, "1-6h"), (86_400, "6-24h"), (3 * 86_400, "1-3d"), (7 * 86_400, "3-7d"))
BREAKDOWNS = "channel, campaign, platform, first_campaign, persona, property:KEY, trait:KEY"


class FunnelError(ValueError):
    """A funnel that cannot be computed as asked; the message names the field."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class Step:
    label: str
    condition: Condition


@dataclass(frozen=True)
class Exclusion:
    """Contacts who do ``step`` between step ``after`` and step ``before`` (1-based; ``before``
    defaults to the last step) are excluded from conversion from the step they had reached."""

    step: Step
    after: int = 1
    before: int | None = None

    def last(self, n: int) -> int:
        return self.before if self.before is not None else n


@dataclass(frozen=True)
class FunnelSpec:
    steps: list[Step]
    start: datetime
    end: datetime
    window_seconds: int = 14 * 86_400
    # channel | campaign | platform | first_campaign | persona | property:KEY | trait:KEY
    breakdown: str | None = None
    top: int = 10
    period: str = "week"  # day | week, for the trend
    as_of: datetime | None = None  # when windows are judged open or closed; default now
    order: str = "ordered"  # ordered | strict | any
    exclusions: tuple[Exclusion, ...] = ()
    journey: Journey | None = field(default=None, compare=False)  # whose personas `persona` uses
    #: only the events of these contacts (a SELECT of contact ids: a persona, a saved segment)
    contacts: Sql | None = field(default=None, compare=False)
    unit: str = "contacts"  # contacts | sessions | attempts: what one entry is
    session_gap: int = SESSION_GAP  # seconds without an event that end a visit (unit sessions)

    def check(self) -> None:
        n = len(self.steps)
        if not 2 <= n <= MAX_STEPS:
            raise FunnelError("steps", f"a funnel has 2 to {MAX_STEPS} steps, got {n}")
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise FunnelError("start", "dates need a time zone")
        if self.end <= self.start:
            raise FunnelError("end", "must be after start")
        if self.window_seconds <= 0:
            raise FunnelError("window", "must be positive")
        if self.order not in ORDERS:
            raise FunnelError("order", f"{self.order!r} is not one of {', '.join(ORDERS)}")
        if self.unit not in UNITS:
            raise FunnelError("unit", f"{self.unit!r} is not one of {', '.join(UNITS)}")
        if self.session_gap <= 0:
            raise FunnelError("session_gap", "must be positive")
        if self.breakdown is not None and not _known_breakdown(self.breakdown):
            raise FunnelError("breakdown", f"{self.breakdown!r} is not one of {BREAKDOWNS}")
        if self.breakdown == "persona" and self.journey is not None and self.journey.subject == "account":
            raise FunnelError(
                "breakdown",
                f"the personas of {self.journey.key} describe accounts, and a funnel counts contacts",
            )
        if self.breakdown == "persona" and (self.journey is None or not self.journey.personas):
            raise FunnelError(
                "breakdown",
                "persona needs a journey with personas"
                + (f" ({self.journey.key} defines none)" if self.journey else " (name one)"),
            )
        if self.period not in ("day", "week"):
            raise FunnelError("period", "day or week")
        if not 1 <= self.top <= 100:
            raise FunnelError("top", "between 1 and 100")
        if len(self.exclusions) > MAX_EXCLUSIONS:
            raise FunnelError("exclusions", f"at most {MAX_EXCLUSIONS}, got {len(self.exclusions)}")
        for x in self.exclusions:
            if not 1 <= x.after < x.last(n) <= n:
                raise FunnelError(
                    "exclusions",
                    f"{x.step.label!r}: between step {x.after} and step {x.last(n)} is not a range "
                    f"of this {n}-step funnel (1 <= after < before <= {n})",
                )


def _known_breakdown(value: str) -> bool:
    if value in ("channel", "campaign", "platform", "first_campaign", "persona"):
        return True
    kind, sep, key = value.partition(":")
    return bool(sep) and kind in ("property", "trait") and key != ""


def parse_step(text: str) -> Step:
    """``Order Completed``, ``event:Product *``, ``page:/checkout/*`` (a page view there),
    ``type:page``, ``channel:store``, ``name:Home``; several joined with `` & `` must all hold."""
    parts = [p.strip() for p in text.split(" & ")]
    fields: dict[str, Any] = {}
    for part in parts:
        kind, sep, value = part.partition(":")
        if sep and kind in ("event", "page", "type", "channel", "name"):
            fields[kind] = value.strip()
        elif sep and kind.startswith("property."):
            fields.setdefault("properties", {})[kind.removeprefix("property.")] = value.strip()
        else:
            fields["event"] = part
        if not (fields.get(kind) if sep and kind in fields else True):
            raise FunnelError("steps", f"{text!r}: {kind} needs a value")
    if any(v == "" for v in fields.values()):
        raise FunnelError("steps", f"{text!r}: empty value")
    # `page:/registrati*` is a visit to that page, not any event sent from it (a track call
    # carries the page it was sent from); `type:* & page:…` asks for any event there
    if "page" in fields and "type" not in fields:
        fields["type"] = "page"
    return Step(text, Condition(**fields))


_RANGE = re.compile(r"^(\d+)-(\d+):(.+)$")


def parse_exclusion(text: str) -> Exclusion:
    """``Coupon Applied`` (between the first and the last step) or ``2-3:Coupon Applied``
    (between step 2 and step 3); the step takes the same patterns as :func:`parse_step`."""
    match = _RANGE.match(text.strip())
    if match is None:
        step = parse_step(text)
        return Exclusion(step)
    step = parse_step(match.group(3).strip())
    return Exclusion(step, int(match.group(1)), int(match.group(2)))


@dataclass
class _Breakdown:
    """Where a breakdown value comes from: the entry event, or the contact (traits, personas,
    first touch) — then computed once per entered contact."""

    event: Sql | None = None  # an expression over the step-1 event ``e``
    contact: Sql | None = None  # an expression over ``f0`` (one row per entered contact)
    join: str = ""  # joined to ``f0`` for ``contact``
    cte: Sql | None = None  # a CTE the join needs (defined after f0)


def _breakdown(session: Session, spec: FunnelSpec) -> _Breakdown:
    breakdown = spec.breakdown
    if breakdown is None:
        return _Breakdown()
    if breakdown == "channel":
        return _Breakdown(event=Sql("e.channel"))
    if breakdown == "campaign":
        return _Breakdown(event=Sql("e.utm_campaign"))
    if breakdown == "platform":
        return _Breakdown(event=Sql(PLATFORM))
    if breakdown == "first_campaign":
        # utm_campaign of the contact's first event ever, after identity resolution
        return _Breakdown(
            contact=Sql("ft.utm_campaign"),
            join=" LEFT JOIN ft ON ft.cid = f0.cid",
            cte=Sql(
                "ft AS (SELECT cid, utm_campaign FROM (SELECT i.contact_id AS cid, e.utm_campaign, "
                "row_number() OVER (PARTITION BY i.contact_id ORDER BY e.timestamp, e.message_id) AS rn "
                f"FROM {RESOLVED_EVENTS} WHERE i.contact_id IN (SELECT cid FROM f0)) y WHERE rn = 1)"
            ),
        )
    if breakdown == "persona":
        from percorso.analytics.personas import persona_sql

        assert spec.journey is not None  # check() made sure
        as_of = min(spec.end, spec.as_of or datetime.now(UTC))
        cases, params = [], []
        for persona in spec.journey.personas:
            members = persona_sql(session, persona, as_of)
            cases.append(f"WHEN f0.cid IN ({members.text}) THEN ?")
            params += [*members.params, persona.key]
        return _Breakdown(contact=Sql(f"CASE {' '.join(cases)} END", params))
    kind, key = breakdown.split(":", 1)
    if kind == "property":
        expr, param = session.json_text("e.properties", key)
        return _Breakdown(event=Sql(expr, [param]))
    expr, param = session.json_text("c.traits", key)
    return _Breakdown(contact=Sql(expr, [param]), join=" JOIN contacts c ON c.contact_id = f0.cid")


def persona_labels(spec: FunnelSpec) -> dict[str, dict[str, str]]:
    """The personas' names in English and Italian, for the groups of a persona breakdown."""
    if spec.journey is None:
        return {}
    out = {}
    for p in spec.journey.personas:
        name = p.name if isinstance(p.name, Name) else Name(en=p.name)
        out[p.key] = {"en": name.get("en"), "it": name.get("it")}
    return out


class _Text:
    """A SQL text built in order, with its ``?`` parameters kept in step."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.params: list[Any] = []

    def add(self, text: str, params: list[Any] | None = None) -> None:
        self.parts.append(text)
        self.params.extend(params or [])

    def sql(self) -> Sql:
        return Sql("".join(self.parts), self.params)


def event_columns(spec: FunnelSpec) -> list[str]:
    """The columns of ``ev`` besides ``bd``."""
    n, m = len(spec.steps), len(spec.exclusions)
    strict = ["considered"] if spec.order == "strict" else []
    return [
        "cid",
        "ts",
        "mid",
        *(f"s{k}" for k in range(1, n + 1)),
        *(f"x{j}" for j in range(1, m + 1)),
        *strict,
        *(["vid"] if spec.unit == "sessions" else []),
    ]


def events_sql(session: Session, spec: FunnelSpec, breakdowns: Sequence[str | None] | None = None) -> Sql:
    """The ``SELECT`` of ``ev``: every event that can matter to the funnel, once, with its flags
    (``cid``, ``ts``, ``mid``, ``s1..sn``, ``x1..xm``, ``considered`` in strict mode, ``bd``; or,
    with ``breakdowns``, ``bd0..bdN``: one value per breakdown, to share the scan among them)."""
    window = int(spec.window_seconds)
    strict = spec.order == "strict"
    flags = [condition_sql(session, s.condition) for s in spec.steps]
    xflags = [condition_sql(session, x.step.condition) for x in spec.exclusions]
    bd = _breakdown(session, spec)
    q = _Text()
    q.add(f"SELECT i.contact_id AS cid, {EPOCH} AS ts, e.message_id AS mid")
    for k, f in enumerate(flags, 1):
        q.add(f", CASE WHEN {f.text} THEN 1 ELSE 0 END AS s{k}", f.params)
    for j, f in enumerate(xflags, 1):
        q.add(f", CASE WHEN {f.text} THEN 1 ELSE 0 END AS x{j}", f.params)
    steps_match = any_of(session, [s.condition for s in spec.steps])
    if strict:
        q.add(
            f", CASE WHEN ({steps_match.text}) OR (e.type = 'track' AND {CUSTOMER_EVENT}) "
            "THEN 1 ELSE 0 END AS considered",
            steps_match.params,
        )
    if breakdowns is not None:
        for j, b in enumerate(breakdowns):
            one = _breakdown(session, replace(spec, breakdown=b)).event
            if one is not None:
                q.add(
                    f", CASE WHEN {flags[0].text} THEN {one.text} END AS bd{j}", flags[0].params + one.params
                )
            else:
                q.add(f", CAST(NULL AS TEXT) AS bd{j}")
    elif bd.event is not None:
        q.add(
            f", CASE WHEN {flags[0].text} THEN {bd.event.text} END AS bd", flags[0].params + bd.event.params
        )
    else:
        q.add(", CAST(NULL AS TEXT) AS bd")
    wanted = any_of(session, [s.condition for s in spec.steps] + [x.step.condition for x in spec.exclusions])
    track = f" OR (e.type = 'track' AND {CUSTOMER_EVENT})" if strict else ""
    until = datetime.fromtimestamp(spec.end.timestamp() + window, UTC)
    if spec.unit == "sessions":
        # Every event of the customer cuts the visits, from a visit's length before the period;
        # only the funnel's own events are kept once each carries its visit number.
        q.add(f", CASE WHEN ({wanted.text}){track} THEN 1 ELSE 0 END AS keep", wanted.params)
        q.add(
            f" FROM {RESOLVED_EVENTS} WHERE e.timestamp >= ? AND e.timestamp < ? "
            f"AND ({CUSTOMER_EVENT} OR ({wanted.text}))",
            [datetime.fromtimestamp(spec.start.timestamp() - spec.session_gap, UTC), until, *wanted.params],
        )
    else:
        q.add(
            f" FROM {RESOLVED_EVENTS} WHERE e.timestamp >= ? AND e.timestamp < ? AND (({wanted.text}){track})",
            [spec.start, until, *wanted.params],
        )
    if spec.contacts is not None:
        q.add(f" AND i.contact_id IN ({spec.contacts.text})", spec.contacts.params)
    if spec.unit != "sessions":
        return q.sql()
    inner = q.sql()
    values = [f"bd{j}" for j in range(len(breakdowns))] if breakdowns is not None else ["bd"]
    columns = ", ".join([c for c in event_columns(spec) if c != "vid"] + values)
    return Sql(
        f"SELECT {columns}, vid FROM (SELECT z.*, sum(nv) OVER (PARTITION BY cid ORDER BY ts, mid "
        "ROWS UNBOUNDED PRECEDING) AS vid FROM (SELECT y.*, CASE WHEN ts - lag(ts) OVER (PARTITION BY cid "
        f"ORDER BY ts, mid) <= {int(spec.session_gap)} THEN 0 ELSE 1 END AS nv FROM ({inner.text}) y) z) v "
        "WHERE keep = 1",
        inner.params,
    )


def entry_keys(spec: FunnelSpec, alias: str) -> str:
    """The columns that name one entry of ``alias`` (a ``reached`` row or a step's CTE)."""
    return f"{alias}.cid" if spec.unit == "contacts" else f"{alias}.cid, {alias}.ent"


def same_entry(spec: FunnelSpec, a: str, b: str) -> str:
    """``a`` and ``b`` are the same entry (a join condition)."""
    if spec.unit == "contacts":
        return f"{a}.cid = {b}.cid"
    return f"{a}.cid = {b}.cid AND {a}.ent = {b}.ent"


def within_entry(spec: FunnelSpec, event: str, entry: str) -> str:
    """An extra condition (or nothing) that keeps the event ``event`` of a contact inside the
    entry ``entry``: the same visit (sessions), before the next step-1 event (attempts)."""
    if spec.unit == "sessions":
        return f" AND {event}.vid = {entry}.ent"
    if spec.unit == "attempts":
        return f" AND ({entry}.lim IS NULL OR {event}.ts < {entry}.lim)"
    return ""


def _carried(spec: FunnelSpec, alias: str) -> str:
    """What every step's CTE carries of its entry: the keys, the attempt's end, the entry time."""
    lim = f", {alias}.lim" if spec.unit == "attempts" else ""
    return f"{entry_keys(spec, alias)}{lim}, {alias}.t1"


def reached_sql(session: Session, spec: FunnelSpec, events: Sql | None = None) -> Sql:
    """CTEs ending in ``reached``: one row per entry (a contact, a visit or an attempt, by
    ``spec.unit``): the contact ``cid``, the entry's number ``ent`` (0 when the unit is contacts),
    ``lim`` (an attempt's end: the contact's next step-1 event; NULL otherwise), ``m1`` (the entry
    event's id), the breakdown value ``bd``, the time of each step reached ``t1..tn`` (epoch
    seconds; NULL when not reached), ``xat`` (the step after which an exclusion step removed the
    entry) and ``brk`` (strict mode: the step after which the next considered event was another
    one). ``ev`` holds the events scanned (:func:`events_sql`, or ``events`` when they were
    computed already)."""
    n = len(spec.steps)
    window = int(spec.window_seconds)
    strict = spec.order == "strict"
    bd = _breakdown(session, spec)
    q = _Text()
    ev = events or events_sql(session, spec)
    q.add(f"WITH ev AS ({ev.text})", ev.params)
    source = "ev"
    if strict:
        # the position of every considered event in the contact's sequence
        q.add(
            ", evs AS (SELECT ev.*, row_number() OVER (PARTITION BY cid ORDER BY ts, mid) AS seq "
            "FROM ev WHERE considered = 1)"
        )
        source = "evs"

    # f0: the entries (by unit) of step-1 events in the period; f1 adds the breakdown value
    seq = ", seq" if strict else ""
    q1 = ", seq AS q1" if strict else ""
    period = [spec.start.timestamp(), spec.end.timestamp()]
    if spec.unit == "contacts":
        q.add(
            f", f0 AS (SELECT cid, ts AS t1, mid AS m1{q1}, bd FROM "
            f"(SELECT cid, ts, mid{seq}, bd, row_number() OVER (PARTITION BY cid ORDER BY ts, mid) AS rn "
            f"FROM {source} WHERE s1 = 1 AND ts >= ? AND ts < ?) x WHERE x.rn = 1)",
            period,
        )
    elif spec.unit == "sessions":
        q.add(
            f", f0 AS (SELECT cid, vid AS ent, ts AS t1, mid AS m1{q1}, bd FROM "
            f"(SELECT cid, vid, ts, mid{seq}, bd, row_number() OVER (PARTITION BY cid, vid ORDER BY ts, mid) "
            f"AS rn FROM {source} WHERE s1 = 1 AND ts >= ? AND ts < ?) x WHERE x.rn = 1)",
            period,
        )
    else:  # attempts: each step-1 event, until the contact's next one (in the period or after)
        q.add(
            f", f0 AS (SELECT cid, ent, lim, ts AS t1, mid AS m1{q1}, bd FROM "
            f"(SELECT cid, ts, mid{seq}, bd, row_number() OVER (PARTITION BY cid ORDER BY ts, mid) AS ent, "
            f"lead(ts) OVER (PARTITION BY cid ORDER BY ts, mid) AS lim FROM {source} WHERE s1 = 1 AND ts < ?) x "
            "WHERE x.ts >= ?)",
            [period[1], period[0]],
        )
    if bd.cte is not None:
        q.add(", " + bd.cte.text, bd.cte.params)
    contact_bd = bd.contact or Sql("f0.bd")
    ent = ", f0.ent" if spec.unit != "contacts" else ""
    lim = ", f0.lim" if spec.unit == "attempts" else ""
    q.add(
        f", f1 AS (SELECT f0.cid{ent}{lim}, f0.t1, f0.m1{', f0.q1' if strict else ''}, {contact_bd.text} AS bd "
        f"FROM f0{bd.join})",
        contact_bd.params,
    )

    if spec.order == "any":
        _any_steps(q, spec, n, window)
    else:
        for k in range(2, n + 1):
            if strict:
                _strict_step(q, spec, k, window)
            else:
                q.add(
                    f", f{k} AS (SELECT {_carried(spec, 'p')}, min(ev.ts) AS t{k} FROM f{k - 1} p "
                    f"JOIN ev ON ev.cid = p.cid AND ev.s{k} = 1 AND ev.ts > p.t{k - 1} AND ev.ts <= p.t1 + {window}"
                    f"{within_entry(spec, 'ev', 'p')} GROUP BY {_carried(spec, 'p')})"
                )
        joins = " ".join(f"LEFT JOIN f{k} ON {same_entry(spec, f'f{k}', 'f1')}" for k in range(2, n + 1))
        times = ", ".join(f"f{k}.t{k}" for k in range(2, n + 1))
        brk = "CAST(NULL AS INTEGER)"
        if strict:
            joins += " " + " ".join(
                f"LEFT JOIN nx{k} ON {same_entry(spec, f'nx{k}', 'f1')}" for k in range(2, n + 1)
            )
            whens = " ".join(
                f"WHEN f{k}.cid IS NULL AND nx{k}.cid IS NOT NULL THEN {k - 1}" for k in range(2, n + 1)
            )
            brk = f"CASE {whens} END"
        q.add(
            f", raw AS (SELECT {_entry_columns(spec, 'f1')}, f1.bd, f1.t1, {times}, {brk} AS brk FROM f1 {joins})"
        )

    _exclude(q, spec, n, window)
    return q.sql()


def _entry_columns(spec: FunnelSpec, alias: str) -> str:
    """``cid, ent, lim, m1`` of an entry, whatever the unit (constants where it has none)."""
    ent = f"{alias}.ent" if spec.unit != "contacts" else "CAST(0 AS BIGINT)"
    lim = f"{alias}.lim" if spec.unit == "attempts" else "CAST(NULL AS DOUBLE PRECISION)"
    return f"{alias}.cid, {ent} AS ent, {lim} AS lim, {alias}.m1"


def _strict_step(q: _Text, spec: FunnelSpec, k: int, window: int) -> None:
    """Step k in strict mode: the next considered event after step k-1 (repeats of step k-1
    skipped) must match step k, strictly later and inside the window."""
    keys = entry_keys(spec, "p")
    q.add(
        f", nx{k} AS (SELECT {keys}, min(e.seq) AS nseq FROM f{k - 1} p JOIN evs e ON e.cid = p.cid "
        f"AND e.seq > p.q{k - 1} AND (e.s{k - 1} = 0 OR e.s{k} = 1){within_entry(spec, 'e', 'p')} "
        f"GROUP BY {keys})"
        f", f{k} AS (SELECT {_carried(spec, 'p')}, e.ts AS t{k}, e.seq AS q{k} FROM f{k - 1} p "
        f"JOIN nx{k} x ON {same_entry(spec, 'x', 'p')} JOIN evs e ON e.cid = x.cid AND e.seq = x.nseq "
        f"WHERE e.s{k} = 1 AND e.ts > p.t{k - 1} AND e.ts <= p.t1 + {window})"
    )


def _any_steps(q: _Text, spec: FunnelSpec, n: int, window: int) -> None:
    """Any order: the first event of each later step within the window after entry (the entry
    event itself excluded); step k is reached once steps 2..k all are, at the latest of them."""
    firsts = ", ".join(f"min(CASE WHEN ev.s{k} = 1 THEN ev.ts END) AS u{k}" for k in range(2, n + 1))
    keys = entry_keys(spec, "p")
    q.add(
        f", u AS (SELECT {keys}, {firsts} FROM f1 p JOIN ev ON ev.cid = p.cid AND ev.ts <= p.t1 + {window} "
        f"AND (ev.ts > p.t1 OR (ev.ts = p.t1 AND ev.mid <> p.m1)){within_entry(spec, 'ev', 'p')} "
        f"GROUP BY {keys})"
    )
    times = []
    for k in range(2, n + 1):
        us = [f"u.u{j}" for j in range(2, k + 1)]
        latest = us[0] if k == 2 else f"greatest({', '.join(us)})"
        times.append(f"CASE WHEN {' AND '.join(f'{u} IS NOT NULL' for u in us)} THEN {latest} END AS t{k}")
    q.add(
        f", raw AS (SELECT {_entry_columns(spec, 'f1')}, f1.bd, f1.t1, {', '.join(times)}, "
        f"CAST(NULL AS INTEGER) AS brk FROM f1 LEFT JOIN u ON {same_entry(spec, 'u', 'f1')})"
    )


def _exclude(q: _Text, spec: FunnelSpec, n: int, window: int) -> None:
    """``reached``: ``raw`` with the steps after an exclusion removed (``xat`` = the step the
    entry had reached when they did the excluded event)."""
    times = ", ".join(f"r.t{k}" for k in range(2, n + 1))
    entry = "r.cid, r.ent, r.lim, r.m1"
    if not spec.exclusions:
        q.add(
            f", reached AS (SELECT {entry}, coalesce(r.bd, '(none)') AS bd, r.t1, {times}, "
            "CAST(NULL AS INTEGER) AS xat, r.brk FROM raw r)"
        )
        return
    whens = []
    for k in range(2, n + 1):  # an excluded event between step k-1 and step k
        covering = [j for j, x in enumerate(spec.exclusions, 1) if x.after <= k - 1 and k <= x.last(n)]
        if not covering:
            continue
        which = " OR ".join(f"ev.x{j} = 1" for j in covering)
        whens.append(
            f"WHEN ({which}) AND r.t{k - 1} IS NOT NULL AND ev.ts > r.t{k - 1} "
            f"AND (ev.ts < r.t{k} OR (r.t{k} IS NULL AND ev.ts <= r.t1 + {window})) THEN {k - 1}"
        )
    any_x = " OR ".join(f"ev.x{j} = 1" for j in range(1, len(spec.exclusions) + 1))
    kept = ", ".join(
        f"CASE WHEN x.xat IS NULL OR x.xat >= {k} THEN r.t{k} END AS t{k}" for k in range(2, n + 1)
    )
    q.add(
        f", cut AS (SELECT r.cid, r.ent, min(CASE {' '.join(whens)} END) AS xat FROM raw r "
        f"JOIN ev ON ev.cid = r.cid AND ({any_x}){within_entry(spec, 'ev', 'r')} GROUP BY r.cid, r.ent)"
        f", reached AS (SELECT {entry}, coalesce(r.bd, '(none)') AS bd, r.t1, {kept}, x.xat, "
        "CASE WHEN x.xat IS NULL THEN r.brk END AS brk FROM raw r LEFT JOIN cut x ON x.cid = r.cid AND x.ent = r.ent)"
    )


def _as_of(spec: FunnelSpec) -> float:
    return (spec.as_of or datetime.now(UTC)).timestamp()


def funnel(
    store: Store, spec: FunnelSpec, *, trend: bool = True, distribution: bool = True
) -> dict[str, Any]:
    """Counts, conversion, in-progress, excluded and dropped contacts, and times between steps,
    per breakdown group (top N by entries, the rest as ``(other)``), with a trend and the
    time-to-convert distribution."""
    spec.check()
    with store.session() as s:
        s.tune_for_analytics()
        # computed once for the three questions below (groups, trend, distribution)
        with materialized(s, spec, events=False) as base:
            return funnel_in(s, spec, base, trend=trend, distribution=distribution)


@contextmanager
def shared_events(session: Session, spec: FunnelSpec, breakdowns: Sequence[str | None]) -> Iterator[str]:
    """``ev`` once for several breakdowns of the same funnel (columns ``bd0..bdN``), into a
    temporary table; yields its name, for :func:`materialized`'s ``shared``."""
    for b in breakdowns:
        replace(spec, breakdown=b).check()
    name = f"percorso_shared_{uuid.uuid4().hex[:12]}"
    ev = events_sql(session, spec, breakdowns)
    session.execute(f"CREATE TEMPORARY TABLE {name} AS {ev.text}", ev.params)
    yield name
    session.execute(f"DROP TABLE {name}")


class SharedReach:
    """A funnel's events and reach computed once for several breakdowns (:func:`shared_reach`):
    a breakdown read from the entry event only relabels each contact's row, so its ``reached``
    is the shared one joined to the entry's value; one read from the contact is computed anew."""

    def __init__(self, session: Session, spec: FunnelSpec, events: str, breakdowns: Sequence[str | None]):
        self.session, self.spec, self.events, self.breakdowns = session, spec, events, list(breakdowns)
        self.name = f"percorso_reach_{uuid.uuid4().hex[:12]}"
        self.columns = ", ".join(event_columns(spec))
        self.from_entry = [
            b is None or _breakdown(session, replace(spec, breakdown=b)).contact is None for b in breakdowns
        ]
        plain = replace(spec, breakdown=None)
        base = reached_sql(
            session, plain, events=Sql(f"SELECT {self.columns}, CAST(NULL AS TEXT) AS bd FROM {events}")
        )
        session.execute(
            f"CREATE TEMPORARY TABLE {self.name} AS {base.text} SELECT * FROM reached", base.params
        )
        # The values of each entry event (counting contacts: the first step-1 event in the period,
        # as f0 picks it; visits or attempts: every step-1 event in it, found by its id).
        values = ", ".join(f"bd{j}" for j in range(len(breakdowns)))
        first = (
            ", row_number() OVER (PARTITION BY cid ORDER BY ts, mid) AS rn" if spec.unit == "contacts" else ""
        )
        session.execute(
            f"CREATE TEMPORARY TABLE {self.name}_entry AS SELECT cid, mid, {values} FROM (SELECT cid, mid, "
            f"{values}{first} FROM {events} WHERE s1 = 1 AND ts >= ? AND ts < ?) x"
            + (" WHERE x.rn = 1" if first else ""),
            [spec.start.timestamp(), spec.end.timestamp()],
        )

    def close(self) -> None:
        self.session.execute(f"DROP TABLE {self.name}_entry")
        self.session.execute(f"DROP TABLE {self.name}")

    @contextmanager
    def base(self, j: int) -> Iterator[Sql]:
        """The CTE prefix (``ev`` and ``reached``) of the ``j``-th breakdown."""
        if not self.from_entry[j]:
            spec = replace(self.spec, breakdown=self.breakdowns[j])
            with materialized(self.session, spec, shared=(self.events, j)) as base:
                yield base
            return
        n = len(self.spec.steps)
        times = ", ".join(f"r.t{k}" for k in range(1, n + 1))
        label = f"coalesce(x.bd{j}, '(none)')" if self.breakdowns[j] is not None else "r.bd"
        table = f"{self.name}_{j}"
        self.session.execute(
            f"CREATE TEMPORARY TABLE {table} AS SELECT r.cid, r.ent, r.lim, r.m1, {label} AS bd, {times}, "
            f"r.xat, r.brk FROM {self.name} r LEFT JOIN {self.name}_entry x ON x.cid = r.cid AND x.mid = r.m1"
        )
        yield Sql(
            f"WITH ev AS (SELECT {self.columns}, bd{j} AS bd FROM {self.events}), "
            f"reached AS (SELECT * FROM {table})"
        )
        self.session.execute(f"DROP TABLE {table}")


@contextmanager
def shared_reach(
    session: Session, spec: FunnelSpec, breakdowns: Sequence[str | None]
) -> Iterator[SharedReach]:
    """The funnel's events read once and its reach computed once for every breakdown."""
    with shared_events(session, spec, breakdowns) as events:
        reach = SharedReach(session, spec, events, breakdowns)
        yield reach
        reach.close()


@contextmanager
def materialized(
    session: Session, spec: FunnelSpec, *, events: bool = True, shared: tuple[str, int] | None = None
) -> Iterator[Sql]:
    """Computes ``reached`` (and ``ev`` unless ``events=False``) once, into temporary tables, for
    several questions about the same funnel (pain points ask seven); yields the CTE prefix that
    reads them. The tables go with the transaction if it fails, and are dropped when it does not.
    ``shared`` is a :func:`shared_events` table and the position of ``spec.breakdown`` in it."""
    spec.check()
    name = f"percorso_funnel_{uuid.uuid4().hex[:12]}"
    if shared is not None:
        table, j = shared
        ev = Sql(f"SELECT {', '.join(event_columns(spec))}, bd{j} AS bd FROM {table}")
        base = reached_sql(session, spec, events=ev)
        session.execute(
            f"CREATE TEMPORARY TABLE {name}_reached AS {base.text} SELECT * FROM reached", base.params
        )
        yield Sql(f"WITH ev AS ({ev.text}), reached AS (SELECT * FROM {name}_reached)")
        session.execute(f"DROP TABLE {name}_reached")
        return
    if events:
        ev = events_sql(session, spec)
        session.execute(f"CREATE TEMPORARY TABLE {name}_ev AS {ev.text}", ev.params)
        base = reached_sql(session, spec, events=Sql(f"SELECT * FROM {name}_ev"))
    else:
        base = reached_sql(session, spec)
    session.execute(
        f"CREATE TEMPORARY TABLE {name}_reached AS {base.text} SELECT * FROM reached", base.params
    )
    reads = f"reached AS (SELECT * FROM {name}_reached)"
    yield Sql(f"WITH ev AS (SELECT * FROM {name}_ev), {reads}" if events else f"WITH {reads}")
    session.execute(f"DROP TABLE {name}_reached")
    if events:
        session.execute(f"DROP TABLE {name}_ev")


def funnel_in(
    s: Session,
    spec: FunnelSpec,
    base: Sql,
    *,
    trend: bool = True,
    distribution: bool = True,
    groups: bool = True,
) -> dict[str, Any]:
    """:func:`funnel` inside a session, over ``base`` (CTEs ending in ``reached``; ``groups=False``
    skips the counts per group when only the trend is wanted)."""
    n = len(spec.steps)
    as_of = _as_of(spec)
    rows: list[dict[str, Any]] = []
    if groups:
        label = (
            "CASE WHEN r.bd IN (SELECT bd FROM top_groups) THEN r.bd ELSE '(other)' END"
            if spec.breakdown
            else "''"  # whatever breakdown ``base`` carries, this question has none
        )
        grouped = (
            base.text + ", sizes AS (SELECT bd, count(*) AS n FROM reached GROUP BY bd), "
            "top_groups AS (SELECT bd FROM sizes ORDER BY n DESC, bd LIMIT ?), "
            f"labelled AS (SELECT r.*, {label} AS grp FROM reached r)"
        )
        aggregates = ["count(*) AS n1"]
        if spec.unit != "contacts":  # how many people made the entries (a contact may be in two groups)
            aggregates += [
                "count(DISTINCT cid) AS people",
                "(SELECT count(DISTINCT cid) FROM reached) AS everyone",
            ]
        params: list[Any] = [*base.params, spec.top]
        for k in range(2, n + 1):
            aggregates.append(f"count(t{k}) AS n{k}")
            aggregates.append(
                f"percentile_cont(0.5) WITHIN GROUP (ORDER BY t{k} - t{k - 1}) AS median{k}, "
                f"percentile_cont(0.9) WITHIN GROUP (ORDER BY t{k} - t{k - 1}) AS p90_{k}"
            )
            aggregates.append(
                f"sum(CASE WHEN t{k - 1} IS NOT NULL AND t{k} IS NULL AND t1 + ? > ? AND xat IS NULL "
                f"AND brk IS NULL AND lim IS NULL THEN 1 ELSE 0 END) AS open{k - 1}, "
                f"sum(CASE WHEN xat = {k - 1} THEN 1 ELSE 0 END) AS excluded{k - 1}"
            )
            params += [spec.window_seconds, as_of]
        rows = s.dicts(
            grouped
            + f" SELECT grp, {', '.join(aggregates)} FROM labelled GROUP BY grp ORDER BY n1 DESC, grp",
            params,
        )
    period = 86_400 if spec.period == "day" else 7 * 86_400
    offset = 0 if spec.period == "day" else WEEK_OFFSET
    step_counts = "".join(f", count(t{k})" for k in range(2, n + 1))
    trend_rows: list[Any] = []
    distribution_rows: list[Any] = []
    if trend:
        trend_rows = s.rows(
            base.text + f" SELECT CAST(floor((t1 - ?) / ?) AS BIGINT) AS bucket, count(*), count(t{n}), "
            f"sum(CASE WHEN t{n} IS NULL AND t1 + ? > ? AND xat IS NULL AND brk IS NULL AND lim IS NULL "
            "THEN 1 ELSE 0 END), "
            f"sum(CASE WHEN t1 + ? <= ? OR lim IS NOT NULL THEN 1 ELSE 0 END){step_counts} "
            "FROM reached GROUP BY 1 ORDER BY 1",
            [*base.params, offset, period, spec.window_seconds, as_of, spec.window_seconds, as_of],
        )
    if distribution:
        cases = " ".join(f"WHEN t{n} - t1 < {limit} THEN {i}" for i, (limit, _) in enumerate(BUCKETS))
        distribution_rows = s.rows(
            base.text + f" SELECT CASE {cases} ELSE {len(BUCKETS)} END AS b, count(*) FROM reached "
            f"WHERE t{n} IS NOT NULL GROUP BY 1 ORDER BY 1",
            base.params,
        )
    by_group = [_group(row, spec, n) for row in rows]
    everyone = int(rows[0]["everyone"] or 0) if rows and "everyone" in rows[0] else None
    total = (
        _total(by_group, n, everyone)
        if spec.breakdown
        else (by_group[0] if by_group else _group({"grp": ""}, spec, n))
    )
    window_label = _duration_label(spec.window_seconds)
    return {
        "steps": [s.label for s in spec.steps],
        "period": {"start": spec.start.isoformat(), "end": spec.end.isoformat()},
        "window": window_label,
        "as_of": datetime.fromtimestamp(as_of, UTC).isoformat(),
        "order": spec.order,
        "exclusions": [
            {"step": x.step.label, "after": x.after, "before": x.last(n)} for x in spec.exclusions
        ],
        "unit": spec.unit,
        "session_gap": _duration_label(spec.session_gap) if spec.unit == "sessions" else None,
        "counting": UNIT_NOTES[spec.unit] + "; " + ORDER_NOTES[spec.order],
        "total": total,
        "breakdown": _breakdown_result(spec, by_group) if spec.breakdown else None,
        "trend": [
            {
                "period_start": datetime.fromtimestamp(int(b) * period + offset, UTC).date().isoformat(),
                "entered": int(entered),
                "converted": int(converted),
                "in_progress": int(open_),
                "conversion": _ratio(converted, entered),
                "closed": int(closed),  # entries whose window has ended
                # every window of the period has ended: its conversion is final, else a lower bound
                "complete": int(closed) == int(entered),
                "steps": [int(entered), *(int(c) for c in counts)],
            }
            for b, entered, converted, open_, closed, *counts in trend_rows
        ],
        "time_to_convert": _distribution(dict(distribution_rows), spec.window_seconds)
        if distribution
        else None,
    }


UNIT_NOTES = {
    "contacts": "unique contacts after identity resolution; first entry in the period",
    "sessions": "visits (a contact's events, after identity resolution, without a gap longer than the "
    "session gap); each visit's first entry, later steps in the same visit",
    "attempts": "every step-1 event starts an attempt, which ends at the contact's next step-1 event; "
    "later steps inside the attempt",
}

ORDER_NOTES = {
    "ordered": "steps in order, other events allowed between them",
    "strict": "each step is the next tracked event after the previous one",
    "any": "later steps in any order within the window",
}


def _breakdown_result(spec: FunnelSpec, groups: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"by": spec.breakdown, "groups": groups}
    if spec.breakdown == "persona":
        out["labels"] = persona_labels(spec)
        out["note"] = "each contact in the first persona (in the journey's order) whose rules it matches"
    elif spec.breakdown == "first_campaign":
        out["note"] = "utm_campaign of the contact's first event, after identity resolution"
    return out


def _group(row: dict[str, Any], spec: FunnelSpec, n: int) -> dict[str, Any]:
    counts = [int(row.get(f"n{k}") or 0) for k in range(1, n + 1)]
    steps = []
    for k in range(1, n + 1):
        step: dict[str, Any] = {"step": k, "label": spec.steps[k - 1].label, "contacts": counts[k - 1]}
        step["conversion_from_previous"] = None if k == 1 else _ratio(counts[k - 1], counts[k - 2])
        step["conversion_from_first"] = _ratio(counts[k - 1], counts[0])
        if k < n:
            open_ = int(row.get(f"open{k}") or 0)
            excluded = int(row.get(f"excluded{k}") or 0)
            step["in_progress"] = open_
            step["excluded"] = excluded
            step["dropped"] = counts[k - 1] - counts[k] - open_ - excluded
        if k > 1:
            median, p90 = row.get(f"median{k}"), row.get(f"p90_{k}")
            step["median_seconds_from_previous"] = None if median is None else round(float(median), 1)
            step["p90_seconds_from_previous"] = None if p90 is None else round(float(p90), 1)
        steps.append(step)
    return {
        "group": row.get("grp") or None,
        "entered": counts[0],
        "converted": counts[-1],
        # the distinct contacts who made the entries
        "people": int(row["people"] or 0) if "people" in row else counts[0],
        "steps": steps,
    }


def _total(groups: list[dict[str, Any]], n: int, everyone: int | None = None) -> dict[str, Any]:
    """Sums of the groups (medians cannot be summed: those come from the unbroken query)."""
    if not groups:
        return {"group": None, "entered": 0, "converted": 0, "people": 0, "steps": []}
    steps = []
    for k in range(n):
        contacts = sum(g["steps"][k]["contacts"] for g in groups)
        step = {"step": k + 1, "label": groups[0]["steps"][k]["label"], "contacts": contacts}
        if k < n - 1:
            for key in ("in_progress", "excluded", "dropped"):
                step[key] = sum(g["steps"][k][key] for g in groups)
        steps.append(step)
    for k, step in enumerate(steps):
        step["conversion_from_previous"] = (
            None if k == 0 else _ratio(step["contacts"], steps[k - 1]["contacts"])
        )
        step["conversion_from_first"] = _ratio(step["contacts"], steps[0]["contacts"])
    return {
        "group": None,
        "entered": steps[0]["contacts"],
        "converted": steps[-1]["contacts"],
        "people": everyone if everyone is not None else sum(g["people"] for g in groups),
        "steps": steps,
    }


def _distribution(counts: dict[Any, Any], window: int) -> list[dict[str, Any]]:
    labels = [label for _, label in BUCKETS] + [
        f"7d-{_duration_label(window)}" if window > 7 * 86_400 else "≥ 7d"
    ]
    return [{"bucket": label, "contacts": int(counts.get(i, 0))} for i, label in enumerate(labels)]


def _ratio(a: Any, b: Any) -> float | None:
    return round(int(a) / int(b), 4) if b else None


def _duration_label(seconds: int) -> str:
    for unit, size in (("w", 7 * 86_400), ("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def dropped_contacts(
    store: Store,
    spec: FunnelSpec,
    step: int,
    limit: int = 1000,
    offset: int = 0,
    *,
    value: str | None = None,
) -> list[dict[str, Any]]:
    """Contacts who dropped after ``step``: reached it, not the next one, and their window has
    closed (or, in strict mode, their next event was another one) — an audience for a follow-up.
    Contacts removed by an exclusion step are not in it. With ``value``, only those whose
    breakdown value (``spec.breakdown``) is ``value``."""
    with store.session() as s:
        s.tune_for_analytics()
        base, where, params = _dropped(s, spec, step, value)
        step_time = "t1" if step == 1 else f"t{step}"
        # A contact who dropped in several visits or attempts is listed once, at the first.
        return s.dicts(
            base.text + ", lost AS (SELECT r.cid, min(r." + step_time + ") AS at FROM reached r "
            f"WHERE {where} GROUP BY r.cid) SELECT d.cid AS contact_id, d.at AS reached_at_epoch, "
            "(SELECT min(value) FROM identities WHERE contact_id = d.cid AND kind = 'email') AS email "
            "FROM lost d ORDER BY d.cid LIMIT ? OFFSET ?",
            [*base.params, *params, limit, offset],
        )


def dropped_count(store: Store, spec: FunnelSpec, step: int, *, value: str | None = None) -> int:
    """How many contacts :func:`dropped_contacts` lists (all pages): contacts, whatever the unit."""
    with store.session() as s:
        s.tune_for_analytics()
        base, where, params = _dropped(s, spec, step, value)
        return int(
            s.rows(
                base.text + f" SELECT count(DISTINCT r.cid) FROM reached r WHERE {where}",
                [*base.params, *params],
            )[0][0]
        )


def _dropped(s: Session, spec: FunnelSpec, step: int, value: str | None) -> tuple[Sql, str, list[Any]]:
    spec.check()
    n = len(spec.steps)
    if not 1 <= step < n:
        raise FunnelError("step", f"between 1 and {n - 1} (the last step has no drop-off)")
    if value is not None and spec.breakdown is None:
        raise FunnelError("value", "a breakdown value needs a breakdown")
    step_time = "t1" if step == 1 else f"t{step}"
    where = (
        f"{step_time} IS NOT NULL AND t{step + 1} IS NULL AND (t1 + ? <= ? OR brk = {step} OR lim IS NOT NULL) "
        "AND xat IS NULL"
    )
    params: list[Any] = [spec.window_seconds, _as_of(spec)]
    if value is not None:
        where += " AND r.bd = ?"
        params.append(value)
    return reached_sql(s, spec), where, params
