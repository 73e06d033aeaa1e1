"""Dashboard pages: surveys — each survey's score (NPS, CSAT or CES) with its interval, answers
over time, the score per stage, persona, touchpoint, page or channel, and the comments,
searchable; the same numbers as ``GET /v1/surveys/{key}/results``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from percorso.analytics.feedback import (
    BREAKDOWNS,
    comment_themes,
    survey_breakdown,
    survey_comments,
    survey_results,
)
from percorso.analytics.stages import StageError, get_journey
from percorso.feedback.store import SurveyNotFound, get_survey, list_surveys
from percorso.journey.definition import display
from percorso.web.dashboard.filters import PageError, period
from percorso.web.dashboard.render import language, page
from percorso.web.dashboard.twins import Viewer, both_on, store_of

router = APIRouter(include_in_schema=False)
both = both_on(router)


@both("/surveys")
def surveys_page(request: Request, session: Viewer) -> Response:
    store = store_of(request)
    span = period(request)
    rows = []
    for listed in list_surveys(store):
        survey, _, _ = get_survey(store, listed["key"])
        result = survey_results(store, survey, span.start, span.end)
        rows.append({**listed, "name": display(survey.name, language(request)), "result": result})
    return page(request, "surveys.html", {"surveys": rows, "period": span.as_dict()}, active="surveys")


@both("/surveys/{key}")
def survey_page(request: Request, session: Viewer, key: str) -> Response:
    store = store_of(request)
    try:
        survey, version, status = get_survey(store, key)
    except SurveyNotFound:
        raise PageError(f"there is no survey {key!r}", "key", 404) from None
    span = period(request)
    q = (request.query_params.get("q") or "").strip()[:200] or None
    try:
        journey = get_journey(store, request.query_params.get("journey") or survey.target.journey)
    except StageError:
        journey = None  # no journey, or several and none named: no stage, persona or touchpoint
    choices = [b for b in BREAKDOWNS if journey is not None or b in ("page", "channel")]
    by = request.query_params.get("by") or choices[0]
    if by not in choices:
        raise PageError(f"by is one of {', '.join(choices)}", "by")
    data: dict[str, Any] = {
        "key": key,
        "name": display(survey.name, language(request)),
        "version": version,
        "status": status,
        "period": span.as_dict(),
        "q": q,
        "result": survey_results(store, survey, span.start, span.end),
        "comments": survey_comments(store, survey, span.start, span.end, q=q),
        "themes": comment_themes(store, survey, span.start, span.end),
        "journey": journey.key if journey else None,
        "by": by,
        "breakdowns": choices,
        "breakdown": survey_breakdown(store, survey, span.start, span.end, by, journey, language(request)),
    }
    return page(request, "survey.html", data, active="surveys")
