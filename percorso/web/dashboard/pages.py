"""The overview and the journey map: the pages a newcomer sees first (sign-in is in signin.py).

Each page has a JSON twin at the same path plus ``.json`` that returns the very dict the
template renders (principle 7 of docs/architecture.md).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from percorso.analytics.journeymap import journey_map
from percorso.analytics.sql import CUSTOMER_EVENT, RESOLVED_EVENTS
from percorso.journey.definition import display
from percorso.store import Store
from percorso.web.dashboard.filters import Filters, PageError, contact_filter, journey_filters
from percorso.web.dashboard.render import language, page
from percorso.web.dashboard.signin import safe_next
from percorso.web.dashboard.twins import Editor, Viewer, both_on

router = APIRouter(include_in_schema=False)
both = both_on(router)

NOTE_MAX = 500


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


# -- shared analytics, cached ---------------------------------------------------------------------
def cached_map(request: Request, filters: Filters, lang: str, period: Any = None) -> dict[str, Any]:
    store = _store(request)
    cache = request.app.state.dashboard_cache
    chosen = period or filters.period

    def pains(compute_pains: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        # The same pain points for every language of the page: one computation, kept as long as the map.
        key = ("pain points", *filters.key(), chosen)
        return dict(cache.get(key, compute_pains, refresh=filters.refresh).value)

    def compute() -> dict[str, Any]:
        result = journey_map(
            store,
            filters.journey,
            persona=filters.persona,
            start=chosen.start,
            end=chosen.end,
            lang=lang,
            refresh=False,
            only=contact_filter(store, filters),
            memo=pains,
        )
        result["notes_by_stage"] = map_notes(store, filters.journey.key)
        result["opportunities_by_stage"] = map_opportunities(store, filters.journey.key, result)
        return result

    key = ("map", *filters.key(), chosen, lang)
    entry = cache.get(key, compute, refresh=filters.refresh)
    return {**entry.value, "computed_at": entry.computed_at.isoformat(), "compute_seconds": entry.seconds}


def map_notes(store: Store, journey_key: str) -> dict[str, list[dict[str, Any]]]:
    with store.session() as s:
        rows = s.dicts(
            "SELECT note_id, stage_key, text, author, created_at FROM map_notes WHERE journey_key = ? "
            "ORDER BY created_at",
            [journey_key],
        )
    out: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        out.setdefault(row["stage_key"], []).append({**row, "created_at": row["created_at"].isoformat()})
    return out


def map_opportunities(
    store: Store, journey_key: str, jmap: dict[str, Any]
) -> dict[str, list[dict[str, Any]]]:
    """The journey's opportunities by stage ("" for the journey as a whole), each saying whether
    the pain point it was planned for is still found in the map's period and filters."""
    from percorso.opportunities import list_opportunities

    found = {
        p.get("key")
        for p in [
            *(p for s in jmap["stages"] for p in s["pain_points"]),
            *jmap.get("unplaced_pain_points", []),
        ]
    }
    out: dict[str, list[dict[str, Any]]] = {}
    for o in list_opportunities(store, journey_key):
        o["pain_found"] = None if o["pain_key"] is None else o["pain_key"] in found
        out.setdefault(o["stage"] or "", []).append(o)
    return out


def _channels(store: Store) -> list[str]:
    with store.session() as s:
        return [r[0] for r in s.rows("SELECT DISTINCT channel FROM events ORDER BY channel LIMIT 50")]


def _segments(store: Store) -> list[dict[str, Any]]:
    with store.session() as s:
        return s.dicts("SELECT segment_key, name FROM segments ORDER BY name")


def _options(request: Request, filters: Filters, lang: str) -> dict[str, Any]:
    store = _store(request)
    cache = request.app.state.dashboard_cache
    channels = cache.get(("channels",), lambda: _channels(store)).value
    return {
        "journeys": [{"key": j.key, "name": display(j.name, lang)} for j in filters.journeys],
        "personas": [{"key": p.key, "name": display(p.name, lang)} for p in filters.journey.personas],
        "channels": channels,
        "segments": _segments(store),
    }


# -- overview -------------------------------------------------------------------------------------
@both("/")
def overview(request: Request, session: Viewer) -> Response:
    lang = language(request)
    try:
        filters = journey_filters(request)
    except PageError as exc:
        if exc.key == "empty.no_journey":
            return page(request, "overview.html", {"empty": True, **_totals(request)}, active="overview")
        raise
    jmap = cached_map(request, filters, lang)
    stages = jmap["stages"]
    first = stages[0]["contacts"]["entered"] if stages else 0
    purchase = next((s for s in stages if "purchase" in s["stage"]), stages[-1] if stages else None)
    nps_num = sum((s["emotion"].get("nps") or 0) * (s["emotion"].get("nps_responses") or 0) for s in stages)
    nps_n = sum(s["emotion"].get("nps_responses") or 0 for s in stages)
    pains = sorted(
        [p for s in stages for p in s["pain_points"]] + jmap.get("unplaced_pain_points", []),
        key=lambda p: p.get("rank") or 0,
    )
    data = {
        "empty": False,
        "filters": filters.as_dict(),
        **_totals(request),
        "conversion_to_purchase": {
            "stage": purchase["stage"] if purchase else None,
            "name": purchase["name"] if purchase else None,
            "value": (purchase["contacts"]["entered"] / first) if purchase and first else None,
        },
        "nps": {"value": round(nps_num / nps_n, 1) if nps_n else None, "responses": nps_n},
        "stage_distribution": [
            {"stage": s["stage"], "name": s["name"], "contacts": s["contacts"]["now"]} for s in stages
        ],
        "stage_trend": _trend(request, filters, lang),
        "top_pain_points": pains[:5],
        "pain_links": pain_links(jmap, filters),
        "recent_activity": _recent(request),
        "computed_at": jmap["computed_at"],
    }
    return page(request, "overview.html", data, active="overview")


def _totals(request: Request) -> dict[str, Any]:
    store = _store(request)
    counts = request.app.state.dashboard_cache.get(("counts",), store.counts).value
    return {"contacts": counts["contacts"], "events": counts["events"]}


def _trend(request: Request, filters: Filters, lang: str) -> list[dict[str, Any]]:
    from percorso.analytics.stages import stage_overview

    store = _store(request)

    def compute() -> list[dict[str, Any]]:
        result = stage_overview(
            store, filters.journey, since=filters.period.start, until=filters.period.end, lang=lang
        )
        return list(result["over_time"])

    return list(request.app.state.dashboard_cache.get(("trend", *filters.key(), lang), compute).value)


def _recent(request: Request, limit: int = 12) -> list[dict[str, Any]]:
    store = _store(request)

    def compute() -> list[dict[str, Any]]:
        return _latest_events(store, limit)

    # Short-lived: "recent" should feel live, but a sort over every event need not run per view.
    entry = request.app.state.dashboard_cache.get(("recent", limit), compute)
    if (datetime.now(UTC) - entry.computed_at).total_seconds() > 5:
        entry = request.app.state.dashboard_cache.get(("recent", limit), compute, refresh=True)
    return list(entry.value)


def _latest_events(store: Store, limit: int) -> list[dict[str, Any]]:
    """The contacts active most recently (by when things happened, up to now), one row each with
    their latest action: among the newest events, so the query stays a top-N however large the
    store; percorso's own automation events are not customer activity."""
    with store.session() as s:
        rows = s.dicts(
            "SELECT timestamp, type, what, channel, contact_id FROM (SELECT l.*, row_number() OVER "
            # an action beats an identify call made at the same moment (one request sends both)
            "(PARTITION BY l.contact_id ORDER BY l.timestamp DESC, CASE WHEN l.type IN ('identify', 'alias', 'group') "
            "THEN 1 ELSE 0 END, l.message_id DESC) AS rn FROM "
            "(SELECT e.timestamp, e.message_id, e.type, coalesce(e.event, e.name, e.page_path, e.type) AS what, "
            f"e.channel, i.contact_id FROM {RESOLVED_EVENTS} WHERE e.timestamp <= ? AND {CUSTOMER_EVENT} "
            "ORDER BY e.timestamp DESC, e.message_id DESC LIMIT ?) l) x WHERE rn = 1 "
            "ORDER BY timestamp DESC, contact_id LIMIT ?",
            [datetime.now(UTC), 40 * limit, limit],
        )
    return [{**r, "timestamp": r["timestamp"].isoformat()} for r in rows]


# -- journey map ----------------------------------------------------------------------------------
@both("/map")
def map_page(request: Request, session: Viewer) -> Response:
    lang = language(request)
    filters = journey_filters(request)
    data: dict[str, Any] = {"filters": filters.as_dict(), "options": _options(request, filters, lang)}
    data["map"] = cached_map(request, filters, lang)
    compare = request.query_params.get("compare_from") or request.query_params.get("compare_to")
    if compare:
        from percorso.web.dashboard.filters import period as parse_period

        before = parse_period(request, "compare_")
        data["filters"]["compare_from"] = before.first.isoformat()
        data["filters"]["compare_to"] = before.last.isoformat()
        data["compare"] = cached_map(request, filters, lang, before)
        data["deltas"] = _deltas(data["compare"], data["map"])
    data["pain_links"] = pain_links(data["map"], filters)
    data["suggestions"] = _suggestions(data["map"], data["pain_links"])
    if session.user.can("editor"):  # whom a planned opportunity may be given to
        from percorso.web.dashboard.opportunities import team

        data["team"] = team(request)
    return page(request, "map.html", data, active="map")


def _deltas(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per stage, how contacts, conversion and time in stage changed from one period to the other."""
    out: dict[str, dict[str, Any]] = {}
    old = {s["stage"]: s for s in before["stages"]}
    for s in after["stages"]:
        o = old.get(s["stage"])
        if o is None:
            continue

        def diff(a: Any, b: Any) -> Any:
            return None if a is None or b is None else b - a

        out[s["stage"]] = {
            "entered": diff(o["contacts"]["entered"], s["contacts"]["entered"]),
            "conversion_to_next": diff(o["conversion_to_next"], s["conversion_to_next"]),
            "median_seconds": diff(
                o["time_in_stage"]["median_seconds"], s["time_in_stage"]["median_seconds"]
            ),
            "emotion": diff(o["emotion"]["score"], s["emotion"]["score"]),
        }
    return out


#: The pain points whose people are those who stopped after the step: a slow step, a loop or a
#: return in a later visit are people who went on, so they get no "lost here" list.
LOST_HERE = ("dropoff", "dip", "errors", "support")


def pain_links(jmap: dict[str, Any], filters: Filters) -> dict[str, str]:
    """For each pain point found in a funnel, the funnel page listing exactly its contacts: those
    who stopped after its step, in its segment (a breakdown value) and in its days (a dated
    incident, else the map's period), among the people the map's filters keep. From there they
    become a segment and an automation reaches them."""
    steps = {f.key: len(f.steps) for f in filters.journey.funnels}
    out: dict[str, str] = {}
    for pain in [
        *(p for s in jmap["stages"] for p in s["pain_points"]),
        *jmap.get("unplaced_pain_points", []),
    ]:
        k, funnel = pain.get("step_index"), pain.get("funnel")
        if pain["kind"] not in LOST_HERE or not funnel or not k or not 1 <= int(k) < steps.get(funnel, 0):
            continue
        when = pain.get("when") if isinstance(pain.get("when"), dict) else None
        query: list[tuple[str, str]] = [
            ("journey", jmap["journey"]),
            ("funnel", str(funnel)),
            ("dropped", str(k)),
        ]
        query += (
            [("from", when["start"]), ("to", when["end"])] if when else list(filters.period.as_dict().items())
        )
        query += [
            (name, str(value))
            for name in ("persona", "segment", "channel")
            if (value := getattr(filters, name))
        ]
        for dim, value in (pain.get("segment") or {}).items():
            query += [("breakdown", dim), ("value", str(value))]
        out[pain["key"]] = "/funnels?" + urlencode(query)
    return out


def _suggestions(jmap: dict[str, Any], links: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    """Opportunities the data suggests: look at (and reach) the contacts behind each pain point,
    each suggestion naming its step and, where it has one, its segment."""
    out: dict[str, list[dict[str, Any]]] = {}
    for stage in jmap["stages"]:
        for pain in stage["pain_points"]:
            link = links.get(pain["key"])
            if link is None or link in {s["link"] for s in out.get(stage["stage"], [])}:
                continue
            out.setdefault(stage["stage"], []).append(
                {
                    "pain": pain.get("summary"),
                    "funnel": pain["funnel"],
                    "step": pain["step_index"],
                    "step_name": pain.get("step"),
                    "segment": pain.get("segment_label"),
                    "link": link,
                }
            )
    return out


@router.post("/map/notes")
def add_note(
    request: Request,
    session: Editor,
    journey: Annotated[str, Form(max_length=63)],
    stage: Annotated[str, Form(max_length=63)],
    text: Annotated[str, Form()],
    next: Annotated[str, Form(max_length=2000)] = "/map",
) -> Response:
    text = text.strip()
    if not text:
        raise PageError("the note is empty", "text")
    if len(text) > NOTE_MAX:
        raise PageError(f"a note holds at most {NOTE_MAX} characters ({len(text)} given)", "text")
    store = _store(request)
    from percorso.analytics.stages import StageError, get_journey

    try:
        definition = get_journey(store, journey)
    except StageError as exc:
        raise PageError(str(exc), "journey", status=404) from None
    if stage not in {s.key for s in definition.stages}:
        raise PageError(f"the journey {journey} has no stage {stage!r}", "stage")
    with store.writing() as s:
        s.execute(
            "INSERT INTO map_notes (note_id, journey_key, stage_key, text, author, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [secrets.token_hex(8), journey, stage, text, session.user.email, datetime.now(UTC)],
        )
    request.app.state.dashboard_cache.clear()
    return RedirectResponse(safe_next(next), status_code=303)
