"""Journeys and analytics REST API (secret key): the JSON twins of the CLI and the dashboard."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Path, Query, Request
from pydantic import Field

from percorso.analytics.funnel import (
    Exclusion,
    FunnelError,
    FunnelSpec,
    dropped_contacts,
    funnel,
    parse_step,
)
from percorso.analytics.journeymap import journey_map
from percorso.analytics.painpoints import Settings as PainSettings
from percorso.analytics.painpoints import find_pain_points
from percorso.analytics.period import DEFAULT_DAYS, default_period
from percorso.analytics.personas import PersonaError
from percorso.analytics.stages import (
    StageError,
    get_journey,
    list_journeys,
    save_journey,
    stage_overview,
    update,
)
from percorso.journey.definition import (
    DURATION_PATTERN,
    Journey,
    JourneyError,
    duration_seconds,
    json_schema,
    load_journey,
)
from percorso.store import Store
from percorso.web.auth import require_secret
from percorso.web.documents import document_body
from percorso.web.errors import ApiError
from percorso.web.openapi import (
    DOCUMENT_SECRET_KEY,
    INVALID,
    INVALID_DOCUMENT,
    NO_NUL,
    NOT_FOUND,
    SECRET_KEY,
    DateTime,
    RequestBody,
    definition_body,
    responses,
)

router = APIRouter(
    prefix="/v1",
    tags=["journeys and analytics"],
    dependencies=[Depends(require_secret), *DOCUMENT_SECRET_KEY],
    responses=SECRET_KEY,
)

JourneyKey = Annotated[str, Path(pattern=r"^[a-z][a-z0-9_-]{0,62}$", description="the journey's key")]
Lang = Annotated[Literal["en", "it"], Query(description="names in English or Italian")]
Since = Annotated[
    DateTime | None,
    Query(
        alias="from",
        description="period start; default midnight UTC 182 days before today (183 days before `to`)",
    ),
]
Until = Annotated[
    DateTime | None,
    Query(alias="to", description="period end, exclusive; default the coming midnight UTC (today included)"),
]


def _store(request: Request) -> Store:
    return request.app.state.store


#: Periods end a year before the calendar does: windows and cohorts are computed past `to`.
_LATEST_END = datetime(9998, 12, 31, tzinfo=UTC)


def _period(since: datetime | None, until: datetime | None) -> tuple[datetime, datetime]:
    """As given, else the dashboard's default period (the 182 days before today and today)."""
    if since is None and until is None:
        return default_period()
    end = _latest_end(_aware(until) if until else default_period()[1])
    start = _aware(since) if since else _earlier(end, timedelta(days=DEFAULT_DAYS + 1))
    if start >= end:
        raise ApiError(400, "invalid_request", "`from` must be before `to`", "from")
    return start, end


def _latest_end(end: datetime) -> datetime:
    if end > _LATEST_END:
        raise ApiError(400, "invalid_request", "`to` must be before 9998-12-31", "to")
    return end


def _earlier(end: datetime, span: timedelta) -> datetime:
    try:
        return end - span
    except OverflowError:  # `to` within `span` of year 1: the period starts with the calendar
        return datetime.min.replace(tzinfo=UTC)


def _checked_duration(text: str, field: str, base: datetime, sign: int) -> int:
    """The duration in seconds, refused with 400 if ``base`` moved by it leaves the calendar."""
    seconds = duration_seconds(text)
    try:
        base + sign * timedelta(seconds=seconds)
    except OverflowError:
        raise ApiError(400, "invalid_request", f"{field}: {text} reaches past the calendar", field) from None
    return seconds


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _journey(store: Store, key: str) -> Journey:
    try:
        return get_journey(store, key)
    except StageError as exc:
        raise ApiError(404, "not_found", str(exc), "journey") from None


@router.get("/journeys", summary="Journeys stored, with how far their stage history goes")
def journeys(request: Request) -> list[dict[str, Any]]:
    return list_journeys(_store(request))


@router.get("/journeys.schema.json", summary="The JSON Schema of journey documents")
def schema() -> dict[str, Any]:
    return json_schema()


@router.put(
    "/journeys/{key}",
    summary="Store or replace a journey (YAML or JSON body) and compute its stage history",
    openapi_extra=definition_body("Journey"),
    responses=responses(INVALID, INVALID_DOCUMENT),
)
async def put_journey(request: Request, key: JourneyKey) -> dict[str, Any]:
    journey = await document_body(request, key, load_journey, JourneyError, "invalid_journey")
    store = _store(request)
    saved = save_journey(store, journey, "api")
    report = update(store, journey)
    return {**saved, "stages": report.as_dict()}


@router.get("/journeys/{key}", summary="A journey's definition", responses=NOT_FOUND)
def get_definition(request: Request, key: JourneyKey) -> dict[str, Any]:
    import msgspec

    return msgspec.to_builtins(_journey(_store(request), key))


@router.get(
    "/journeys/{key}/stages",
    summary="Stage overview: contacts per stage, conversion, time, stuck",
    responses=NOT_FOUND,
)
def stages(
    request: Request,
    key: JourneyKey,
    since: Since = None,
    until: Until = None,
    stuck_after: Annotated[str, Query(pattern=DURATION_PATTERN, description="30m, 12h, 14d, 2w")] = "30d",
    lang: Lang = "en",
) -> dict[str, Any]:
    store = _store(request)
    journey = _journey(store, key)
    start, end = _period(since, until)
    stuck_seconds = _checked_duration(stuck_after, "stuck_after", datetime.now(UTC), -1)
    update(store, journey)
    return stage_overview(
        store,
        journey,
        since=start,
        until=end,
        lang=lang,
        stuck_after=timedelta(seconds=stuck_seconds),
    )


@router.get("/journeys/{key}/map", summary="The journey map for a persona and a period", responses=NOT_FOUND)
def journey_map_endpoint(
    request: Request,
    key: JourneyKey,
    persona: Annotated[str | None, Query(max_length=63)] = None,
    since: Since = None,
    until: Until = None,
    lang: Lang = "en",
    pain_points: bool = True,
) -> dict[str, Any]:
    store = _store(request)
    journey = _journey(store, key)
    start, end = _period(since, until)
    try:
        return journey_map(
            store, journey, persona=persona, start=start, end=end, lang=lang, with_pain_points=pain_points
        )
    except PersonaError as exc:
        raise ApiError(400, "invalid_request", str(exc), exc.field) from None


@router.get(
    "/journeys/{key}/painpoints",
    summary="Pain points found automatically in the journey's funnels",
    responses=NOT_FOUND,
)
def painpoints(
    request: Request,
    key: JourneyKey,
    since: Since = None,
    until: Until = None,
    dimension: Annotated[list[str] | None, Query(max_length=10)] = None,
    min_z: Annotated[float, Query(ge=1, le=20)] = 4.0,
    min_effect: Annotated[float, Query(gt=0, lt=1)] = 0.05,
    fdr: Annotated[float, Query(gt=0, lt=1, description="false discovery rate (Benjamini-Hochberg)")] = 0.05,
    lang: Lang = "en",
) -> dict[str, Any]:
    store = _store(request)
    journey = _journey(store, key)
    start, end = _period(since, until)
    cfg = PainSettings(
        min_z=min_z, min_effect=min_effect, fdr=fdr, dimensions=tuple(dimension) if dimension else None
    )
    try:
        return find_pain_points(
            store, journey, start=start, end=end, as_of=min(end, datetime.now(UTC)), settings=cfg, lang=lang
        )
    except FunnelError as exc:
        raise ApiError(400, "invalid_request", str(exc), "dimension") from None


class ExclusionRequest(RequestBody):
    step: str = Field(
        min_length=1,
        max_length=500,
        pattern=NO_NUL,
        description="the excluded event (same patterns as steps)",
    )
    after: int = Field(1, ge=1, le=19, description="between this step...")
    before: int | None = Field(None, ge=2, le=20, description="...and this one (default: the last step)")


class FunnelRequest(RequestBody):
    steps: list[Annotated[str, Field(pattern=NO_NUL)]] = Field(
        min_length=2,
        max_length=20,
        description="event names or event:/page:/type:/channel:/name:/property.KEY: patterns",
    )
    start: DateTime | None = Field(None, alias="from")
    end: DateTime | None = Field(None, alias="to")
    window: str = Field("14d", pattern=DURATION_PATTERN)
    order: Literal["ordered", "strict", "any"] = Field(
        "ordered",
        description="ordered: other events may come between steps; strict: each step is the next "
        "tracked event; any: later steps in any order within the window",
    )
    exclusions: list[ExclusionRequest] = Field(default_factory=list, max_length=10)
    breakdown: str | None = Field(
        None,
        pattern=NO_NUL,
        description="channel, campaign, platform, first_campaign, persona, property:KEY or trait:KEY",
    )
    journey: str | None = Field(
        None, pattern=r"^[a-z][a-z0-9_-]{0,62}$", description="whose personas `persona` uses"
    )
    top: int = Field(10, ge=1, le=100)
    period: Literal["day", "week"] = "week"
    unit: Literal["contacts", "sessions", "attempts"] = Field(
        "contacts",
        description="what one entry is: contacts (each once), sessions (each visit) or attempts "
        "(every step-1 event, until the contact's next)",
    )
    session_gap: str = Field(
        "30m",
        pattern=DURATION_PATTERN,
        description="unit sessions: a visit ends after this long without an event",
    )


@router.post(
    "/funnels",
    summary="Funnel conversion between steps (ordered, strict, any order), in contacts, sessions or attempts",
)
def funnel_endpoint(
    request: Request,
    spec: Annotated[FunnelRequest, Body()],
    dropped_at: Annotated[
        int | None, Query(ge=1, le=19, description="list the contacts who dropped after this step")
    ] = None,
) -> Any:
    start, end = _period(spec.start, spec.end)
    store = _store(request)
    journey = None
    if spec.breakdown == "persona" or spec.journey is not None:
        try:
            journey = get_journey(store, spec.journey)
        except StageError as exc:
            raise ApiError(400, "invalid_request", str(exc), "journey") from None
    try:
        exclusions = []
        for x in spec.exclusions:
            try:
                exclusions.append(Exclusion(parse_step(x.step), x.after, x.before))
            except FunnelError as exc:
                raise FunnelError("exclusions", str(exc)) from None
        funnel_spec = FunnelSpec(
            steps=[parse_step(s) for s in spec.steps],
            start=start,
            end=end,
            window_seconds=_checked_duration(spec.window, "window", end, 1),
            breakdown=spec.breakdown,
            top=spec.top,
            period=spec.period,
            order=spec.order,
            exclusions=tuple(exclusions),
            journey=journey,
            unit=spec.unit,
            session_gap=_checked_duration(spec.session_gap, "session_gap", start, -1),
        )
        if dropped_at is not None:
            return {"contacts": dropped_contacts(store, funnel_spec, dropped_at)}
        return funnel(store, funnel_spec)
    except FunnelError as exc:
        raise ApiError(400, "invalid_request", str(exc), exc.field) from None


@router.get(
    "/heatmaps", summary="Clicks, rage and dead clicks, top elements and scroll depth for a page pattern"
)
def heatmap_endpoint(
    page: Annotated[
        str, Query(min_length=1, max_length=500, pattern=r"^[/*]", description="a path; * wildcards")
    ],
    request: Request,
    since: Since = None,
    until: Until = None,
    band: Literal["desktop", "tablet", "mobile"] | None = None,
    top: Annotated[int, Query(ge=1, le=100)] = 20,
) -> dict[str, Any]:
    from percorso.analytics.heatmap import heatmap

    start, end = _period(since, until)
    return heatmap(request.app.state.store, page, start, end, band=band, top=top)


@router.get("/paths", summary="Paths within sessions, as Sankey nodes and links")
def paths_endpoint(
    request: Request,
    since: Since = None,
    until: Until = None,
    from_step: Annotated[str | None, Query(max_length=200)] = None,
    to_step: Annotated[str | None, Query(max_length=200)] = None,
    max_steps: Annotated[int, Query(ge=2, le=20)] = 5,
    top: Annotated[
        int, Query(ge=1, le=500, description="At most this many links; each step keeps its busiest nodes")
    ] = 150,
    session_gap: Annotated[str, Query(pattern=DURATION_PATTERN)] = "30m",
    collapse: bool = True,
    url_rule: Annotated[list[str] | None, Query(max_length=20, description="REGEX=>REPLACEMENT")] = None,
) -> dict[str, Any]:
    from percorso.analytics.paths import PathError, PathSpec, paths

    start, end = _period(since, until)
    rules = []
    for rule in url_rule or []:
        pattern, sep, replacement = rule.partition("=>")
        if not sep:
            raise ApiError(400, "invalid_request", f"{rule!r}: write REGEX=>REPLACEMENT", "url_rule")
        rules.append((pattern, replacement))
    try:
        spec = PathSpec(
            start=start,
            end=end,
            from_step=parse_step(from_step).condition if from_step else None,
            to_step=parse_step(to_step).condition if to_step else None,
            max_steps=max_steps,
            top_edges=top,
            session_gap_seconds=duration_seconds(session_gap),
            collapse_repeats=collapse,
            url_rules=rules,
        )
        return paths(_store(request), spec)
    except (PathError, FunnelError) as exc:
        raise ApiError(400, "invalid_request", str(exc), exc.field) from None


@router.get(
    "/attribution",
    summary="Which channels or campaigns earn the conversions: first and last touch, linear, time decay, "
    "position-based, Markov removal effect and Shapley",
)
def attribution_endpoint(
    request: Request,
    conversion: Annotated[
        str,
        Query(min_length=1, max_length=200, pattern=NO_NUL, description="the conversion, as a funnel step"),
    ] = "Order Completed",
    since: Since = None,
    until: Until = None,
    by: Annotated[Literal["channel", "campaign", "source", "medium"], Query()] = "channel",
    lookback: Annotated[str, Query(pattern=DURATION_PATTERN, description="touches this long before")] = "30d",
    half_life: Annotated[str, Query(pattern=DURATION_PATTERN, description="time decay's half-life")] = "7d",
    visit_gap: Annotated[
        str, Query(pattern=DURATION_PATTERN, description="a visit ends after this pause")
    ] = "30m",
) -> dict[str, Any]:
    from percorso.analytics.attribution import AttributionError, AttributionSpec, attribution

    start, end = _period(since, until)
    gap = _checked_duration(visit_gap, "visit_gap", start, -1)
    try:
        spec = AttributionSpec(
            conversion=parse_step(conversion).condition,
            start=start,
            end=end,
            by=by,
            # touches are read from a lookback and a visit before the period
            lookback_seconds=_checked_duration(
                lookback, "lookback", _earlier(start, timedelta(seconds=gap)), -1
            ),
            half_life_seconds=duration_seconds(half_life),
            visit_gap=gap,
        )
        return {"conversion": conversion, **attribution(_store(request), spec)}
    except (AttributionError, FunnelError) as exc:
        raise ApiError(400, "invalid_request", str(exc), exc.field) from None


@router.get("/transitions", summary="The transition graph: A → B counts, probability and median time")
def transitions_endpoint(
    request: Request,
    since: Since = None,
    until: Until = None,
    top: Annotated[int, Query(ge=1, le=500)] = 50,
    session_gap: Annotated[str, Query(pattern=DURATION_PATTERN)] = "30m",
) -> list[dict[str, Any]]:
    from percorso.analytics.paths import PathError, transitions

    start, end = _period(since, until)
    try:
        return transitions(
            _store(request), start, end, top=top, session_gap_seconds=duration_seconds(session_gap)
        )
    except PathError as exc:
        raise ApiError(400, "invalid_request", str(exc), exc.field) from None


@router.get(
    "/retention", summary="Retention cohorts: who came back in each period after their first start event"
)
def retention_endpoint(
    request: Request,
    since: Annotated[
        DateTime | None,
        Query(alias="from", description="first cohort; default 30 days, 12 weeks or 12 months before `to`"),
    ] = None,
    until: Until = None,
    period: Annotated[Literal["day", "week", "month"], Query(description="calendar periods in UTC")] = "week",
    periods: Annotated[int, Query(ge=1, le=100, description="later periods after the cohort's own")] = 8,
    start_event: Annotated[
        str | None, Query(max_length=500, description="cohort by its first occurrence; default: first seen")
    ] = None,
    return_event: Annotated[
        str | None, Query(max_length=500, description="what counts as coming back; default: any event")
    ] = None,
) -> dict[str, Any]:
    from percorso.analytics.retention import RetentionError, RetentionSpec, default_range, retention

    end = _latest_end(_aware(until) if until else datetime.now(UTC))
    try:
        start = _aware(since) if since else default_range(period, end)[0]
    except OverflowError:  # `to` early in year 1: the cohorts start with the calendar
        start = datetime.min.replace(tzinfo=UTC)
    if start >= end:
        raise ApiError(400, "invalid_request", "`from` must be before `to`", "from")
    try:
        spec = RetentionSpec(
            start=start,
            end=end,
            period=period,
            periods=periods,
            start_event=_parse_named_step(start_event, "start_event"),
            return_event=_parse_named_step(return_event, "return_event"),
        )
        return retention(_store(request), spec)
    except RetentionError as exc:
        raise ApiError(400, "invalid_request", str(exc), exc.field) from None


def _parse_named_step(text: str | None, field: str) -> Any:
    if text is None:
        return None
    try:
        return parse_step(text)
    except FunnelError as exc:
        raise ApiError(400, "invalid_request", f"{field}: {exc}", field) from None
