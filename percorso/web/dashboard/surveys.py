"""Dashboard pages: surveys — each survey's score (NPS, CSAT or CES) with its interval, answers
over time, the score per stage, persona, touchpoint, page or channel, and the comments,
searchable; the same numbers as ``GET /v1/surveys/{key}/results``."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from percorso.analytics.feedback import (
    BREAKDOWNS,
    comment_themes,
    survey_breakdown,
    survey_comments,
    survey_results,
)
from percorso.analytics.stages import StageError, get_journey
from percorso.feedback.definition import Survey, SurveyError, load_survey
from percorso.feedback.store import (
    SurveyNotFound,
    get_survey,
    list_surveys,
    save_survey,
    set_survey_status,
    survey_document,
)
from percorso.journey.definition import display
from percorso.store import Store
from percorso.web.dashboard.automations import MAX_SOURCE, definition_yaml, key_line
from percorso.web.dashboard.filters import PageError, period
from percorso.web.dashboard.i18n import Translator
from percorso.web.dashboard.render import language, page
from percorso.web.dashboard.security import WebSession
from percorso.web.dashboard.twins import Editor, Viewer, both_on, store_of

log = logging.getLogger("percorso.dashboard")
NOTICES = ("created", "saved", "unchanged", "paused", "active")

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


#: New surveys start from one of these, written as an editor would (in the reader's language
#: for the comments; the questions in English and Italian).
TEMPLATES: dict[str, str] = {
    "nps": """\
# {c_key}
key: nps
name: {{en: "Would you recommend us?", it: "Ci consiglieresti?"}}
questions:
  - id: score
    kind: nps
    required: true
    text: {{en: "How likely are you to recommend us to a friend?",
           it: "Quanto è probabile che ci consiglieresti a un amico?"}}
  - id: why
    kind: open
    text: {{en: "What is the main reason for your score?", it: "Qual è il motivo principale del tuo voto?"}}
# {c_target}
target: {{pages: ["/*"], sample: 100}}
# {c_show}
show: {{every: 90d, delay: 5}}
""",
    "csat": """\
# {c_key}
key: csat
name: {{en: "How did it go?", it: "Com'è andata?"}}
questions:
  - id: score
    kind: csat
    required: true
    text: {{en: "How satisfied are you with your order?", it: "Quanto sei soddisfatto del tuo ordine?"}}
  - id: why
    kind: open
    text: {{en: "What could we do better?", it: "Cosa potremmo fare meglio?"}}
# {c_target}
target: {{pages: ["/*"]}}
# {c_show}
show: {{delay: 3}}
""",
    "ces": """\
# {c_key}
key: ces
name: {{en: "Was it easy?", it: "È stato facile?"}}
questions:
  - id: score
    kind: ces
    required: true
    text: {{en: "How easy was it to get what you needed today?", it: "Quanto è stato facile ottenere ciò che ti serviva oggi?"}}
# {c_target}
target: {{pages: ["/*"]}}
# {c_show}
show: {{delay: 3}}
""",
}


def _template(kind: str, t: Translator) -> str:
    return TEMPLATES[kind].format(
        c_key=t("survey.tpl.key"), c_target=t("survey.tpl.target"), c_show=t("survey.tpl.show")
    )


def _load(store: Store, text: str, key: str | None) -> tuple[Survey | None, list[dict[str, Any]]]:
    """The survey in ``text`` and the problems that stop it being saved (as the API checks it;
    ``key``: the survey being edited, None for a new one)."""
    if len(text) > MAX_SOURCE:
        return None, [
            {"line": None, "field": "", "message": f"the definition is longer than {MAX_SOURCE} characters"}
        ]
    try:
        survey = load_survey(text, "definition")
    except SurveyError as exc:
        return None, [p.as_dict() for p in exc.problems]
    line = key_line(text)
    if key is not None and survey.key != key:
        return None, [
            {
                "line": line,
                "field": "key",
                "message": f"the document's key is {survey.key!r}, this survey is {key!r}; "
                "to make a new survey, use New survey on the Surveys page",
            }
        ]
    if key is None and survey.key in {s["key"] for s in list_surveys(store)}:
        return None, [
            {
                "line": line,
                "field": "key",
                "message": f"there is already a survey {survey.key!r}: choose another key, or edit that survey on its page",
            }
        ]
    return survey, []


def _save(
    request: Request, session: WebSession, survey: Survey, text: str
) -> dict[str, Any] | list[dict[str, Any]]:
    try:
        saved = save_survey(store_of(request), survey, f"dashboard:{session.user.email}", document=text)
    except SurveyError as exc:  # the audience names a journey, stage or segment that is not there
        return [p.as_dict() for p in exc.problems]
    log.info("survey %s saved as version %s by %s", survey.key, saved["version"], session.user.email)
    return saved


@both("/surveys/new")
def new_survey_page(request: Request, session: Editor) -> Response:
    kind = request.query_params.get("template") or "nps"
    if kind not in TEMPLATES:
        raise PageError(f"template is one of {', '.join(TEMPLATES)}", "template")
    t = Translator(language(request))
    data = {
        "template": kind,
        "templates": list(TEMPLATES),
        "source": _template(kind, t),
        "problems": [],
        "problem_lines": [],
    }
    return page(request, "survey_new.html", data, active="surveys")


@router.post("/surveys/new")
def create_survey(request: Request, session: Editor, definition: Annotated[str, Form()] = "") -> Response:
    text = definition.replace("\r\n", "\n")  # browsers send a textarea's lines with CRLF
    survey, problems = _load(store_of(request), text, None)
    saved = _save(request, session, survey, text) if survey is not None else problems
    if isinstance(saved, list):
        data = {
            "template": None,
            "templates": list(TEMPLATES),
            "source": text,
            "problems": saved,
            "problem_lines": sorted({p["line"] for p in saved if p.get("line")}),
        }
        return page(request, "survey_new.html", data, status=422, active="surveys")
    assert survey is not None
    return RedirectResponse(f"/surveys/{survey.key}?created=1", status_code=303)


@router.post("/surveys/{key}/definition")
def save_survey_definition(
    request: Request, session: Editor, key: str, definition: Annotated[str, Form()] = ""
) -> Response:
    store = store_of(request)
    try:
        get_survey(store, key)
    except SurveyNotFound:
        raise PageError(f"there is no survey {key!r}", "key", 404) from None
    text = definition.replace("\r\n", "\n")
    survey, problems = _load(store, text, key)
    saved = _save(request, session, survey, text) if survey is not None else problems
    if isinstance(saved, list):
        data = _detail(request, key)
        data.update(
            source=text, problems=saved, problem_lines=sorted({p["line"] for p in saved if p.get("line")})
        )
        return page(request, "survey.html", data, status=422, active="surveys")
    target = f"/surveys/{key}?saved={saved['version']}" if saved["changed"] else f"/surveys/{key}?unchanged=1"
    return RedirectResponse(target + "#definition", status_code=303)


def _set_status(request: Request, session: WebSession, key: str, status: str) -> Response:
    try:
        set_survey_status(store_of(request), key, status)
    except SurveyNotFound:
        raise PageError(f"there is no survey {key!r}", "key", 404) from None
    log.info("survey %s set %s by %s", key, status, session.user.email)
    return RedirectResponse(f"/surveys/{key}?{status}=1", status_code=303)


@router.post("/surveys/{key}/pause")
def pause_survey(request: Request, session: Editor, key: str) -> Response:
    return _set_status(request, session, key, "paused")


@router.post("/surveys/{key}/resume")
def resume_survey(request: Request, session: Editor, key: str) -> Response:
    return _set_status(request, session, key, "active")


@both("/surveys/{key}")
def survey_page(request: Request, session: Viewer, key: str) -> Response:
    return page(request, "survey.html", _detail(request, key), active="surveys")


def _detail(request: Request, key: str) -> dict[str, Any]:
    store = store_of(request)
    try:
        survey, version, status = get_survey(store, key)
        document = survey_document(store, key)
    except SurveyNotFound:
        raise PageError(f"there is no survey {key!r}", "key", 404) from None
    notice = next((n for n in NOTICES if n in request.query_params), None)
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
        "source": document or definition_yaml(survey),
        "problems": [],
        "problem_lines": [],
        "notice": {"kind": notice, "version": request.query_params.get(notice) or None} if notice else None,
    }
    return data
