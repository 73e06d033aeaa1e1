"""Funnels (builder, chart, time to convert, trend, the contacts who dropped, saved as a segment)
and paths (Sankey and the transition graph)."""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from percorso.analytics.funnel import (
    BREAKDOWNS,
    ORDERS,
    UNITS,
    Exclusion,
    FunnelError,
    FunnelSpec,
    Step,
    dropped_contacts,
    dropped_count,
    funnel,
    parse_exclusion,
    parse_step,
)
from percorso.analytics.painpoints import journey_funnels
from percorso.analytics.paths import END, OTHER, PathError, PathSpec, paths
from percorso.analytics.summaries import segment_label
from percorso.journey.definition import DURATION_PATTERN, JourneyError, display, duration_seconds
from percorso.store import Store
from percorso.web.dashboard.filters import PageError, journey_filters, people, period, stored_journeys
from percorso.web.dashboard.i18n import Translator
from percorso.web.dashboard.render import language, page
from percorso.web.dashboard.twins import Editor, Viewer, both_on

router = APIRouter(include_in_schema=False)
both = both_on(router)

DROPPED_PAGE = 100  # contacts per page of a drop-off list
PEOPLE_FILTERS = ("persona", "segment", "channel")
SEGMENT_KEY = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def _journey_funnels(store: Store, lang: str) -> list[dict[str, Any]]:
    """The funnels defined in journeys, offered as starting points in the builder."""
    out = []
    for journey in stored_journeys(store):
        for f in journey.funnels:
            out.append(
                {
                    "journey": journey.key,
                    "key": f.key,
                    "name": display(f.name, lang),
                    "steps": [_condition_text(c) for c in f.steps],
                    "window": f.window,
                    "order": f.order,
                    "unit": f.unit,
                    "session_gap": f.session_gap,
                    "exclude": [_exclusion_text(x, len(f.steps)) for x in f.exclude],
                }
            )
    return out


def _exclusion_text(x: Any, steps: int) -> str:
    """An exclusion as the builder writes it: ``Event`` or ``2-3:Event`` (between steps 2 and 3)."""
    text = _condition_text(x)
    return text if x.after == 1 and x.before is None else f"{x.after}-{x.before or steps}:{text}"


def _from_journey(
    request: Request, form: dict[str, Any]
) -> tuple[list[Step] | None, tuple[Exclusion, ...] | None]:
    """The chosen journey funnel's own steps and exclusions, while the builder shows them
    unedited: the text form of a step cannot say everything a journey condition can (lists of
    events, properties)."""
    if not form["funnel"]:
        return None, None
    for journey in stored_journeys(_store(request)):
        if form["journey"] and journey.key != form["journey"]:
            continue
        for f, defined in zip(journey.funnels, journey_funnels(journey), strict=True):
            if f.key != form["funnel"]:
                continue
            steps = defined.steps if form["steps"] == [_condition_text(c) for c in f.steps] else None
            unedited = form["exclude"] == [_exclusion_text(x, len(f.steps)) for x in f.exclude]
            return steps, defined.exclusions if unedited else None
    return None, None


def _condition_text(condition: Any) -> str:
    for kind in ("event", "page", "type", "name", "channel"):
        value = getattr(condition, kind, None)
        if value:
            return value if kind == "event" and isinstance(value, str) else f"{kind}:{value}"
    return str(condition)


def funnel_form(request: Request, lang: str) -> dict[str, Any]:
    """The builder's state from the query string; a journey funnel (``funnel=``) fills the gaps."""
    q = request.query_params
    steps = [s.strip() for s in q.getlist("step") if s.strip()]
    window = q.get("window") or ""
    order = q.get("order") or "ordered"
    unit = q.get("unit") or ""
    gap = "30m"
    exclude = [e.strip() for e in q.getlist("exclude") if e.strip()]
    chosen = q.get("funnel")
    journey = q.get("journey") or ""
    known = _journey_funnels(_store(request), lang)
    if not steps and not chosen and known:  # start from the first journey funnel
        chosen, journey = known[0]["key"], known[0]["journey"]
    if chosen and not steps:
        match = next(
            (f for f in known if f["key"] == chosen and f["journey"] == (journey or f["journey"])), None
        )
        if match is None:
            raise PageError(f"there is no funnel {chosen!r} in the stored journeys", "funnel")
        steps, window, journey = match["steps"], window or match["window"], match["journey"]
        order = q.get("order") or match["order"]
        unit, gap = unit or match["unit"], match["session_gap"]
        exclude = exclude or match["exclude"]
    window = window or "14d"
    if not re.fullmatch(DURATION_PATTERN, window):
        raise PageError(f"window: {window!r} is not a duration such as 30m, 12h, 14d or 2w", "window")
    if order not in ORDERS:
        raise PageError(f"order: {order!r} is not one of {', '.join(ORDERS)}", "order")
    unit = unit or "contacts"
    if unit not in UNITS:
        raise PageError(f"unit: {unit[:40]!r} is not one of {', '.join(UNITS)}", "unit")
    dropped = q.get("dropped")
    if dropped and (not dropped.isdigit() or not 1 <= int(dropped) < max(len(steps), 2)):
        raise PageError(
            f"dropped: {dropped!r} is not a step that has a next step (1–{len(steps) - 1})", "dropped"
        )
    value = q.get("value")
    if value is not None and not (q.get("breakdown") and dropped):
        raise PageError(
            "value: lists the contacts of one group, so it needs a breakdown and dropped", "value"
        )
    return {
        "steps": steps,
        "window": window,
        "order": order,
        "unit": unit,
        "session_gap": gap,
        "exclude": exclude,
        "breakdown": q.get("breakdown") or "",
        "funnel": chosen or "",
        "journey": journey,
        "dropped": int(dropped) if dropped else None,
        "value": value,
        "period": period(request).as_dict(),
        # the map's filters, kept when a pain point links here: only these people's events count
        "people": {k: q.get(k) for k in PEOPLE_FILTERS if q.get(k)},
    }


def _spec(request: Request, form: dict[str, Any]) -> FunnelSpec:
    chosen = period(request)
    journey = None
    if form["breakdown"] == "persona":
        journeys = stored_journeys(_store(request))
        journey = next((j for j in journeys if j.key == form["journey"]), journeys[0] if journeys else None)
    steps, exclusions = _from_journey(request, form)
    contacts = people(_store(request), journey_filters(request)) if form["people"] else None
    try:
        return FunnelSpec(
            steps=steps or [parse_step(s) for s in form["steps"]],
            start=chosen.start,
            end=chosen.end,
            window_seconds=duration_seconds(form["window"]),
            breakdown=form["breakdown"] or None,
            order=form["order"],
            exclusions=exclusions
            if exclusions is not None
            else tuple(parse_exclusion(e) for e in form["exclude"]),
            journey=journey,
            contacts=contacts,
            unit=form["unit"],
            session_gap=duration_seconds(form["session_gap"]),
        )
    except (FunnelError, JourneyError, ValueError) as exc:
        raise PageError(str(exc), getattr(exc, "field", "steps")) from None


@both("/funnels")
def funnels_page(request: Request, session: Viewer) -> Response:
    lang = language(request)
    form = funnel_form(request, lang)
    data: dict[str, Any] = {
        "form": form,
        "journey_funnels": _journey_funnels(_store(request), lang),
        "orders": list(ORDERS),
        "units": list(UNITS),
        "breakdowns": BREAKDOWNS,
        "result": None,
        "dropped": None,
    }
    if len(form["steps"]) >= 2:
        spec = _spec(request, form)
        store = _store(request)
        key = ("funnel", repr(spec), tuple(sorted(form["people"].items())))
        try:
            entry = request.app.state.dashboard_cache.get(key, lambda: funnel(store, spec))
            data["result"] = entry.value
            data["computed_at"] = entry.computed_at.isoformat()
            if form["dropped"]:
                # The step table's count, paged: every contact it counts can be listed (one
                # group's, counted apart, when a pain point in a segment links here).
                # Counting visits or attempts, a contact may have dropped more than once: the
                # list counts contacts.
                if form["value"] is None and spec.unit == "contacts":
                    total = int(entry.value["total"]["steps"][form["dropped"] - 1].get("dropped") or 0)
                else:
                    total = dropped_count(store, spec, form["dropped"], value=form["value"])
                pages = max(1, -(-total // DROPPED_PAGE))
                number = _page_number(request, pages)
                data["dropped"] = {
                    "step": form["dropped"],
                    "label": form["steps"][form["dropped"] - 1],
                    "value": form["value"],
                    # the group as the map names it ("Android", "device mobile")
                    "group": segment_label({form["breakdown"]: form["value"]}, lang)
                    if form["value"] is not None
                    else None,
                    "total": total,
                    "page": number,
                    "pages": pages,
                    "first": (number - 1) * DROPPED_PAGE + 1,
                    "contacts": [
                        {**c, "reached_at": datetime.fromtimestamp(c["reached_at_epoch"], UTC).isoformat()}
                        for c in dropped_contacts(
                            store,
                            spec,
                            form["dropped"],
                            limit=DROPPED_PAGE,
                            offset=(number - 1) * DROPPED_PAGE,
                            value=form["value"],
                        )
                    ],
                }
        except FunnelError as exc:
            raise PageError(str(exc), exc.field) from None
    return page(request, "funnels.html", data, active="funnels")


def _page_number(request: Request, pages: int) -> int:
    raw = request.query_params.get("page") or "1"
    if not raw.isdigit() or not 1 <= int(raw) <= pages:
        raise PageError(f"page: {raw[:20]!r} is not a page of this list (1–{pages})", "page")
    return int(raw)


@router.post("/funnels/segment")
def save_segment(
    request: Request,
    session: Editor,
    name: Annotated[str, Form(max_length=100)],
    query: Annotated[str, Form(max_length=4000)],
    then: Annotated[str, Form(max_length=20)] = "",
) -> Response:
    """Saves the contacts who dropped at a step as a segment (usable as a map filter); with
    ``then=reach``, goes on to the form that starts an automation for them."""
    from starlette.datastructures import QueryParams

    name = name.strip()
    if not name:
        raise PageError("give the segment a name", "name")
    key = re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-")[:50] or "segment"
    if not SEGMENT_KEY.match(key):
        raise PageError(f"{name!r} cannot be made into a segment key", "name")
    scope = dict(request.scope)
    scope["query_string"] = query.lstrip("?").encode()
    sub = Request(scope, request.receive)
    form = funnel_form(sub, language(request))
    if not form["dropped"]:
        raise PageError("choose the step whose dropped contacts form the segment", "dropped")
    spec = _spec(sub, form)
    store = _store(request)
    try:
        contacts = dropped_contacts(store, spec, form["dropped"], limit=1_000_000, value=form["value"])
    except FunnelError as exc:
        raise PageError(str(exc), exc.field) from None
    with store.writing() as s:
        if s.rows("SELECT 1 FROM segments WHERE segment_key = ?", [key]):
            key = f"{key}-{secrets.token_hex(2)}"
        s.execute(
            "INSERT INTO segments (segment_key, name, source, created_by, created_at) VALUES (?, ?, ?, ?, ?)",
            [
                key,
                name,
                _json({"funnel": form, "query": str(QueryParams(query.lstrip("?")))}),
                session.user.email,
                datetime.now(UTC),
            ],
        )
        ids = sorted({int(c["contact_id"]) for c in contacts})
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            s.execute(
                "INSERT INTO segment_members (segment_key, contact_id) VALUES "
                + ", ".join("(?, ?)" for _ in chunk),
                [v for cid in chunk for v in (key, cid)],
            )
    request.app.state.dashboard_cache.clear()
    if then == "reach":
        return RedirectResponse(f"/segments/{key}/reach", status_code=303)
    return RedirectResponse(f"/map?segment={key}", status_code=303)


def _json(value: Any) -> str:
    import json

    return json.dumps(value, default=str)


# -- paths ----------------------------------------------------------------------------------------
@both("/paths")
def paths_page(request: Request, session: Viewer) -> Response:
    q = request.query_params
    chosen = period(request)
    max_steps = _int(q.get("max_steps"), 5, 2, 10, "max_steps")
    top = _int(q.get("top"), 150, 5, 500, "top")
    gap = q.get("session_gap") or "30m"
    if not re.fullmatch(DURATION_PATTERN, gap):
        raise PageError(f"session_gap: {gap!r} is not a duration such as 30m or 2h", "session_gap")
    form: dict[str, Any] = {
        "from_step": q.get("from_step") or "",
        "to_step": q.get("to_step") or "",
        "max_steps": max_steps,
        "top": top,
        "session_gap": gap,
        "period": chosen.as_dict(),
    }
    store = _store(request)
    try:
        spec = PathSpec(
            start=chosen.start,
            end=chosen.end,
            from_step=parse_step(form["from_step"]).condition if form["from_step"] else None,
            to_step=parse_step(form["to_step"]).condition if form["to_step"] else None,
            max_steps=max_steps,
            top_edges=top,
            session_gap_seconds=duration_seconds(gap),
        )
        cache = request.app.state.dashboard_cache
        result = cache.get(("paths", repr(spec)), lambda: paths(store, spec)).value
    except (PathError, FunnelError) as exc:
        raise PageError(str(exc), exc.field) from None
    t = Translator(language(request))
    texts = {n["id"]: node_text(n["label"], t) for n in result["nodes"]}
    chart = {
        "nodes": [{**n, "text": texts[n["id"]], "kind": node_kind(n["label"])} for n in result["nodes"]],
        "links": result["links"],
        "measure": "transitions",
    }
    return page(
        request,
        "paths.html",
        {"form": form, "paths": result, "chart": chart, "steps": step_table(result, texts)},
        active="paths",
    )


def node_kind(label: str) -> str:
    if label in (OTHER, END):
        return "other" if label == OTHER else "end"
    return "page" if label.startswith("page:") else "screen" if label.startswith("screen:") else "event"


def node_text(label: str, t: Translator) -> str:
    """A node as the reader says it: the page's path, a screen's name, the event's name."""
    kind = node_kind(label)
    if kind in ("other", "end"):
        return t("paths." + kind)
    if kind == "page":
        return label.removeprefix("page:")
    if kind == "screen":
        return t("paths.screen", name=label.removeprefix("screen:"))
    return label


def step_table(result: dict[str, Any], texts: dict[str, str]) -> list[dict[str, Any]]:
    """The chart's links as rows, by step: each with its share of everything that left its
    source node (so the rows of one source add up to 100%)."""
    out: dict[str, int] = {}
    for link in result["links"]:
        out[link["source"]] = out.get(link["source"], 0) + link["transitions"]
    rows = [
        {
            "step": int(link["source"].split(":", 1)[0]),
            "source": texts.get(link["source"], link["source"]),
            "target": texts.get(link["target"], link["target"]),
            "transitions": link["transitions"],
            "contacts": link["contacts"],
            "share": link["transitions"] / out[link["source"]] if out[link["source"]] else None,
        }
        for link in result["links"]
    ]
    return sorted(rows, key=lambda r: (r["step"], -r["transitions"], r["source"], r["target"]))


def _int(value: str | None, default: int, low: int, high: int, field: str) -> int:
    if not value:
        return default
    if not value.isdigit() or not low <= int(value) <= high:
        raise PageError(f"{field}: {value!r} is not a whole number from {low} to {high}", field)
    return int(value)


# -- attribution ----------------------------------------------------------------------------------
@both("/attribution")
def attribution_page(request: Request, session: Viewer) -> Response:
    from percorso.analytics.attribution import (
        DIMENSIONS,
        MODELS,
        AttributionError,
        AttributionSpec,
        attribution,
    )
    from percorso.analytics.customer import order_events

    q = request.query_params
    chosen = period(request)
    store = _store(request)
    journeys = stored_journeys(store)
    conversion = (q.get("conversion") or "").strip() or order_events(journeys[0] if journeys else None)[0]
    by = q.get("by") or "channel"
    lookback = q.get("lookback") or "30d"
    measure = q.get("measure") or "conversions"
    if by not in DIMENSIONS:
        raise PageError(f"by: {by[:40]!r} is not one of {', '.join(DIMENSIONS)}", "by")
    if not re.fullmatch(DURATION_PATTERN, lookback):
        raise PageError(f"lookback: {lookback[:20]!r} is not a duration such as 7d or 2w", "lookback")
    if measure not in ("conversions", "revenue"):
        raise PageError(f"measure: {measure[:20]!r} is not conversions or revenue", "measure")
    form = {
        "conversion": conversion,
        "by": by,
        "lookback": lookback,
        "measure": measure,
        "period": chosen.as_dict(),
    }
    try:
        spec = AttributionSpec(
            conversion=parse_step(conversion).condition,
            start=chosen.start,
            end=chosen.end,
            by=by,
            lookback_seconds=duration_seconds(lookback),
            contacts=people(store, journey_filters(request))
            if any(q.get(k) for k in PEOPLE_FILTERS)
            else None,
        )
        spec.check()
        cache = request.app.state.dashboard_cache
        result = cache.get(
            ("attribution", repr(spec), tuple((k, q.get(k)) for k in PEOPLE_FILTERS)),
            lambda: attribution(store, spec),
        ).value
    except (AttributionError, FunnelError) as exc:
        raise PageError(str(exc), exc.field) from None
    if measure == "revenue" and result["revenue"] is None:
        measure = form["measure"] = "conversions"  # nothing to credit: the conversions carry no revenue
    t = Translator(language(request))
    chart = {
        "labels": [row["value"] for row in result["values"]],
        "series": [
            {
                "name": t("attribution.model_" + m),
                "data": [round(row[measure][m], 2) for row in result["values"]],
            }
            for m in MODELS
        ],
    }
    return page(
        request,
        "attribution.html",
        {
            "form": form,
            "result": result,
            "chart": chart,
            "models": list(MODELS),
            "dimensions": list(DIMENSIONS),
            "currency": journeys[0].currency if journeys else None,
        },
        active="attribution",
    )
