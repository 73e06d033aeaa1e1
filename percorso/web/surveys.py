"""Surveys over REST: definitions and results (secret key), answers from the visitor's browser
(write key and the visitor token of POST /v1/visitors)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import msgspec
from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import Field

from percorso.analytics.feedback import (
    ANSWERED,
    comment_themes,
    survey_breakdown,
    survey_comments,
    survey_results,
)
from percorso.analytics.stages import StageError, get_journey
from percorso.automation.state import bucket
from percorso.events import MessageError, new_received_at, parse_message
from percorso.feedback.audience import in_audience
from percorso.feedback.definition import (
    AnswerError,
    Survey,
    SurveyError,
    check_answers,
    json_schema,
    load_survey,
)
from percorso.feedback.store import (
    SurveyNotFound,
    active_surveys,
    get_survey,
    list_surveys,
    save_survey,
    set_survey_status,
    survey_history,
    visitor_contact,
)
from percorso.journey.definition import Journey, JourneyError, duration_seconds
from percorso.web.auth import require_secret, require_write, visitor_of
from percorso.web.documents import document_body, problems_error
from percorso.web.errors import ApiError
from percorso.web.openapi import (
    DOCUMENT_SECRET_KEY,
    DOCUMENT_WRITE_KEY,
    FORBIDDEN,
    INVALID,
    INVALID_DOCUMENT,
    NO_NUL,
    NOT_FOUND,
    SECRET_KEY,
    WRITE_KEY,
    DateTime,
    RequestBody,
    definition_body,
    responses,
)

router = APIRouter(
    prefix="/v1",
    tags=["surveys"],
    dependencies=[Depends(require_secret), *DOCUMENT_SECRET_KEY],
    responses=SECRET_KEY,
)
answers = APIRouter(
    prefix="/v1",
    tags=["surveys"],
    dependencies=[Depends(require_write), *DOCUMENT_WRITE_KEY],
    responses=WRITE_KEY,
)

SurveyKey = Annotated[str, Path(pattern=r"^[a-z][a-z0-9_-]{0,62}$", description="the survey's key")]


def _survey(request: Request, key: str) -> tuple[Survey, int, str]:
    try:
        return get_survey(request.app.state.store, key)
    except SurveyNotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from None


@router.get("/surveys", summary="Surveys stored")
def surveys(request: Request) -> dict[str, Any]:
    return {"surveys": list_surveys(request.app.state.store)}


@router.get("/surveys.schema.json", summary="The JSON Schema of survey documents")
def schema() -> dict[str, Any]:
    return json_schema()


@router.put(
    "/surveys/{key}",
    summary="Store a survey (YAML or JSON body); a changed definition becomes a new version",
    openapi_extra=definition_body("Survey"),
    responses=responses(INVALID, INVALID_DOCUMENT),
)
async def put_survey(request: Request, key: SurveyKey) -> dict[str, Any]:
    survey = await document_body(request, key, load_survey, SurveyError, "invalid_survey")
    # YAML is kept as written for the dashboard's editor; JSON comes from programs
    text = (await request.body()).decode("utf-8")
    document = None if text.lstrip().startswith("{") else text
    try:
        return save_survey(request.app.state.store, survey, "api", document=document)
    except SurveyError as exc:
        raise problems_error("invalid_survey", exc.problems) from None


def _status(request: Request, key: str, status: str) -> dict[str, Any]:
    try:
        return set_survey_status(request.app.state.store, key, status)
    except SurveyNotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from None


@router.post(
    "/surveys/{key}/pause",
    summary="Pause a survey: it is offered to nobody (answers already on their way are kept)",
    responses=NOT_FOUND,
)
def pause_survey(request: Request, key: SurveyKey) -> dict[str, Any]:
    return _status(request, key, "paused")


@router.post("/surveys/{key}/resume", summary="Resume a paused survey", responses=NOT_FOUND)
def resume_survey(request: Request, key: SurveyKey) -> dict[str, Any]:
    return _status(request, key, "active")


@router.get("/surveys/{key}", summary="A survey's definition", responses=NOT_FOUND)
def get_definition(request: Request, key: SurveyKey) -> dict[str, Any]:
    survey, version, status = _survey(request, key)
    return {"version": version, "status": status, "definition": msgspec.to_builtins(survey)}


@router.get(
    "/surveys/{key}/results",
    summary="NPS, CSAT or CES with counts and a 95% interval, in total and per period",
    responses=responses(NOT_FOUND, INVALID),
)
def results(
    request: Request,
    key: SurveyKey,
    start: Annotated[DateTime | None, Query(alias="from")] = None,
    end: Annotated[DateTime | None, Query(alias="to")] = None,
    period: Literal["day", "week", "month"] = "week",
    by: Annotated[
        Literal["stage", "persona", "touchpoint", "page", "channel"] | None,
        Query(description="also the score per stage, persona, touchpoint, page or channel"),
    ] = None,
    journey: Annotated[
        str | None,
        Query(
            pattern=r"^[a-z][a-z0-9_-]{0,62}$",
            description="the journey of stage, persona and touchpoint (default: the survey's, else the only one)",
        ),
    ] = None,
) -> dict[str, Any]:
    survey, _, _ = _survey(request, key)
    end = end or datetime.now(UTC)
    start = start or end - timedelta(days=90)
    if start >= end:
        raise ApiError(400, "invalid_request", "from must be before to", "from")
    store = request.app.state.store
    result = survey_results(store, survey, start, end, period=period)
    if by is not None:
        chosen = None
        if by in ("stage", "persona", "touchpoint"):
            try:
                chosen = get_journey(store, journey or survey.target.journey)
            except StageError as exc:
                raise ApiError(400, "invalid_request", str(exc), "journey") from None
            result["journey"] = chosen.key
        result["by"] = by
        result["breakdown"] = survey_breakdown(store, survey, start, end, by, chosen)
    return result


@router.get(
    "/surveys/{key}/comments",
    summary="The newest comments (a literal search with q) and the themes they share",
    responses=responses(NOT_FOUND, INVALID),
)
def comments(
    request: Request,
    key: SurveyKey,
    start: Annotated[DateTime | None, Query(alias="from")] = None,
    end: Annotated[DateTime | None, Query(alias="to")] = None,
    q: Annotated[
        str | None, Query(max_length=200, pattern=NO_NUL, description="words in the comment")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    survey, _, _ = _survey(request, key)
    end = end or datetime.now(UTC)
    start = start or end - timedelta(days=90)
    if start >= end:
        raise ApiError(400, "invalid_request", "from must be before to", "from")
    store = request.app.state.store
    return {
        "survey": survey.key,
        "comments": survey_comments(store, survey, start, end, q=q, limit=limit),
        "themes": comment_themes(store, survey, start, end),
    }


class Answers(RequestBody):
    token: str = Field(max_length=400, description="the visitor token POST /v1/visitors gave this browser")
    answers: dict[Annotated[str, Field(max_length=64, pattern=NO_NUL)], Any] = Field(
        max_length=20, description="question id → score, option or text"
    )
    page: str | None = Field(None, max_length=2048, pattern=NO_NUL, description="the page the survey was on")


@answers.post(
    "/surveys/{key}/answers",
    summary="A visitor's answers to a survey, stored as a Survey Answered event",
    status_code=201,
    responses=responses(NOT_FOUND, FORBIDDEN, INVALID),
)
async def answer(request: Request, key: SurveyKey, body: Answers) -> dict[str, Any]:
    state = request.app.state
    survey, version, _ = _survey(request, key)
    visitor = visitor_of(request, body.token)
    try:
        checked = check_answers(survey, body.answers)
    except AnswerError as exc:
        raise ApiError(400, "invalid_answer", str(exc), f"answers.{exc.question}") from None
    scored = survey.scored()
    properties: dict[str, Any] = {"survey": survey.key, "version": version, "answers": checked}
    if scored is not None and scored.id in checked:
        properties.update(kind=scored.kind, score=checked[scored.id])
    comment = next((checked[q.id] for q in survey.questions if q.kind == "open" and q.id in checked), None)
    if comment:
        properties["comment"] = comment
    for name in ("stage", "touchpoint"):
        if getattr(survey, name):
            properties[name] = getattr(survey, name)
    message: dict[str, Any] = {
        "type": "track",
        "event": ANSWERED,
        "anonymousId": visitor,
        "properties": properties,
        "context": {"channel": "survey", **({"page": {"path": body.page}} if body.page else {})},
    }
    try:
        event = parse_message(
            msgspec.json.encode(message),
            received_at=new_received_at(),
            classifier=state.classifier,
            limits=state.limits,
        )
    except MessageError as exc:
        raise ApiError(400, "invalid_answer", str(exc), exc.field) from None
    outcome = await state.writer.write([event])
    return {"success": True, "stored": event.message_id in outcome.stored, "messageId": event.message_id}


@answers.get(
    "/visitors/surveys",
    summary="The surveys this visitor may be shown now (percorso.js asks on each page)",
    responses=FORBIDDEN,
)
def visitor_surveys(
    request: Request,
    token: Annotated[str, Query(max_length=400, description="the token POST /v1/visitors gave this browser")],
) -> dict[str, Any]:
    """Server-side rules: the audience (stages, personas, segments), once per contact (or again
    after ``show.every``), never once ``stop_after`` answers arrived, and a stable
    ``target.sample`` of visitors. Pages, devices, the event that opens it and the delay are the
    browser's to check: they are in the answer."""
    state = request.app.state
    visitor = visitor_of(request, token)
    surveys = active_surveys(state.store)
    seen, totals = survey_history(state.store, visitor, [s.key for s in surveys])
    now = datetime.now(UTC)
    shown = []
    audience = [s for s in surveys if s.target.has_audience()]
    if audience:
        contact = visitor_contact(state.store, visitor)
        journeys: dict[str, Journey | None] = {}
        for key in {s.target.journey for s in audience if s.target.journey is not None}:
            try:
                journeys[key] = get_journey(state.store, key)
            except (StageError, JourneyError):
                journeys[key] = None  # removed since: its stages and personas match nobody
        with state.store.session() as session:
            for survey in audience:
                journey = journeys.get(survey.target.journey) if survey.target.journey else None
                if not in_audience(session, survey, journey, contact):
                    surveys.remove(survey)
    for survey in surveys:
        history = seen.get(survey.key, {})
        last = max(history.values()) if history else None
        if last is not None and (
            survey.show.every is None or now - last < timedelta(seconds=duration_seconds(survey.show.every))
        ):
            continue
        if survey.show.stop_after is not None and totals.get(survey.key, 0) >= survey.show.stop_after:
            continue
        if bucket(survey.key, "sample", visitor) >= survey.target.sample:
            continue
        shown.append(
            {
                "key": survey.key,
                "questions": msgspec.to_builtins(survey.questions),
                "target": msgspec.to_builtins(survey.target),
                "delay": survey.show.delay,
            }
        )
    return {"surveys": shown}
