"""Automations REST API (secret key), and the public endpoints emails and the tracker call:
unsubscribe, open and click tracking, on-site messages."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, Field
from starlette.convertors import Convertor, register_url_convertor

from percorso.automation import links
from percorso.automation.definition import AutomationError, json_schema, load_automation
from percorso.automation.engine import Engine
from percorso.automation.stats import automation_stats, contact_automations
from percorso.automation.store import (
    AutomationNotFound,
    get_automation,
    list_automations,
    save_automation,
    set_status,
)
from percorso.store import Store
from percorso.store.base import Session
from percorso.web.auth import require_secret, require_write, visitor_of
from percorso.web.documents import document_body, problems_error
from percorso.web.errors import ApiError
from percorso.web.openapi import (
    CONFLICT,
    DOCUMENT_SECRET_KEY,
    DOCUMENT_WRITE_KEY,
    FORBIDDEN,
    INVALID,
    INVALID_DOCUMENT,
    NOT_FOUND,
    SECRET_KEY,
    WRITE_KEY,
    RequestBody,
    definition_body,
    responses,
)

router = APIRouter(
    prefix="/v1",
    tags=["automations"],
    dependencies=[Depends(require_secret), *DOCUMENT_SECRET_KEY],
    responses=SECRET_KEY,
)
public = APIRouter(tags=["email links"])
onsite = APIRouter(
    prefix="/v1",
    tags=["collector"],
    dependencies=[Depends(require_write), *DOCUMENT_WRITE_KEY],
    responses=WRITE_KEY,
)

AutomationKey = Annotated[str, Path(pattern=r"^[a-z][a-z0-9_-]{0,62}$", description="the automation's key")]


class _DocumentKey(Convertor[str]):
    """Any path segment but ``schema``: /v1/automations/schema is the JSON Schema, so PUT there
    is a 405 rather than an automation that GET could never return."""

    regex = "(?!schema$)[^/]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("automation_key", _DocumentKey())


def _store(request: Request) -> Store:
    return request.app.state.store


def _engine(request: Request) -> Engine:
    engine: Engine | None = getattr(request.app.state, "engine", None)
    if engine is None:
        engine = Engine(_store(request))
        request.app.state.engine = engine
    return engine


def _not_found(exc: AutomationNotFound) -> ApiError:
    return ApiError(404, "not_found", str(exc), "key")


@router.get("/automations", summary="Every automation with its status and how many contacts are inside")
def get_automations(request: Request) -> dict[str, Any]:
    return {"automations": list_automations(_store(request))}


@router.get("/automations/schema", summary="JSON Schema of automation documents (for editors)")
def get_schema() -> dict[str, Any]:
    return json_schema()


@router.put(
    "/automations/{key:automation_key}",
    summary="Store an automation (YAML or JSON body); a changed definition becomes a new version",
    openapi_extra=definition_body("Automation"),
    responses=responses(INVALID, INVALID_DOCUMENT),
)
async def put_automation(request: Request, key: AutomationKey) -> dict[str, Any]:
    automation = await document_body(request, key, load_automation, AutomationError, "invalid_automation")
    from percorso.automation.triggers import reference_problems

    unknown = reference_problems(_store(request), automation, "body")
    if unknown:
        raise problems_error("invalid_automation", unknown)
    # YAML is kept as written for the editor; JSON comes from programs, and the editor shows it as YAML
    text = (await request.body()).decode("utf-8")
    document = None if text.lstrip().startswith("{") else text
    return save_automation(_store(request), automation, "api", document=document)


@router.get(
    "/automations/{key:automation_key}",
    summary="An automation's definition (newest version, or ?version=N)",
    responses=NOT_FOUND,
)
def get_definition(
    request: Request, key: AutomationKey, version: Annotated[int | None, Query(ge=1)] = None
) -> dict[str, Any]:
    try:
        automation, number, status = get_automation(_store(request), key, version)
    except AutomationNotFound as exc:
        raise _not_found(exc) from None
    return {"version": number, "status": status, "definition": msgspec.to_builtins(automation)}


@router.get(
    "/automations/{key}/stats",
    summary="Per-step counts, goal conversion and uplift against the holdout",
    responses=NOT_FOUND,
)
def get_stats(request: Request, key: AutomationKey) -> dict[str, Any]:
    try:
        return automation_stats(_store(request), key)
    except AutomationNotFound as exc:
        raise _not_found(exc) from None


@router.get(
    "/automations/{key}/experiment",
    summary="The automation's split step as an A/B test: each arm's goal conversion, the difference with "
    "its 95% interval, the sample-ratio check, the chance to be best and a verdict",
    responses=NOT_FOUND,
)
def get_experiment(
    request: Request,
    key: AutomationKey,
    step: Annotated[
        str | None, Query(max_length=64, description="the split step (default: the first)")
    ] = None,
) -> dict[str, Any]:
    from percorso.experiments.automation import ExperimentError, automation_experiment

    try:
        return automation_experiment(_store(request), key, step)
    except AutomationNotFound as exc:
        raise _not_found(exc) from None
    except ExperimentError as exc:
        raise ApiError(400, "invalid_request", str(exc), exc.field) from None


@router.post(
    "/automations/{key}/pause",
    summary="Pause: nobody enters, nobody inside moves, nothing is sent",
    responses=NOT_FOUND,
)
def pause(request: Request, key: AutomationKey) -> dict[str, Any]:
    try:
        return set_status(_store(request), key, "paused")
    except AutomationNotFound as exc:
        raise _not_found(exc) from None


@router.post(
    "/automations/{key}/resume",
    summary="Resume: overdue waits and held messages run at once",
    responses=NOT_FOUND,
)
def resume(request: Request, key: AutomationKey) -> dict[str, Any]:
    try:
        result = set_status(_store(request), key, "active")
    except AutomationNotFound as exc:
        raise _not_found(exc) from None
    _store(request).events_arrived.set()
    return result


class EnrollBody(RequestBody):
    contactId: int = Field(ge=1, description="the contact to enroll")


@router.post(
    "/automations/{key}/enroll",
    summary="Enroll a contact now (API-triggered automations)",
    responses=responses(NOT_FOUND, CONFLICT),
)
def enroll(request: Request, key: AutomationKey, body: EnrollBody) -> dict[str, Any]:
    try:
        result = _engine(request).enroll(key, body.contactId)
    except AutomationNotFound as exc:
        raise _not_found(exc) from None
    except LookupError as exc:
        raise ApiError(404, "not_found", str(exc), "contactId") from None
    except ValueError as exc:
        raise ApiError(409, "conflict", str(exc), "key") from None
    _store(request).events_arrived.set()
    return result


@router.get(
    "/contacts/{contact_id}/automations",
    summary="Which automations touched a contact, and why",
    responses=NOT_FOUND,
)
def get_contact_automations(request: Request, contact_id: Annotated[int, Path(ge=1)]) -> dict[str, Any]:
    try:
        return {"contact": contact_id, "steps": contact_automations(_store(request), contact_id)}
    except LookupError as exc:
        raise ApiError(404, "not_found", str(exc), "contact_id") from None


# -- public links (signed; no key) ----------------------------------------------------------

_PIXEL = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)

_UNSUB_PAGE = """<!doctype html><html lang="{lang}"><meta charset="utf-8"><title>{title}</title>
<body style="font-family:sans-serif;max-width:32rem;margin:4rem auto"><h1>{title}</h1><p>{text}</p>{form}</body></html>"""
_TEXTS = {
    "en": (
        "Unsubscribe",
        "Stop receiving marketing emails from us?",
        "Unsubscribe",
        "You will receive no more marketing emails.",
    ),
    "it": (
        "Disiscrizione",
        "Non vuoi più ricevere le nostre email promozionali?",
        "Disiscrivimi",
        "Non riceverai più email promozionali.",
    ),
}


def _lang(request: Request) -> str:
    return "it" if request.headers.get("accept-language", "").lower().startswith("it") else "en"


def _invalid_link() -> ApiError:
    return ApiError(404, "not_found", "this link is not valid (it may have been changed)")


def _contact_from(request: Request, token: str) -> int:
    value = links.read(_engine(request).secret, links.UNSUBSCRIBE, token)
    if value is None:
        raise _invalid_link()
    return int(value.split(":", 1)[0])


@public.get(
    "/u/{token}",
    response_class=HTMLResponse,
    summary="Unsubscribe page (linked from every marketing email)",
    responses=NOT_FOUND,
)
def unsubscribe_page(request: Request, token: str) -> HTMLResponse:
    _contact_from(request, token)
    title, text, button, _ = _TEXTS[_lang(request)]
    form = f'<form method="post"><button type="submit">{button}</button></form>'
    return HTMLResponse(_UNSUB_PAGE.format(lang=_lang(request), title=title, text=text, form=form))


@public.post(
    "/u/{token}",
    response_class=HTMLResponse,
    summary="Unsubscribe (the page's button and RFC 8058 one-click)",
    responses=NOT_FOUND,
)
def unsubscribe(request: Request, token: str) -> HTMLResponse:
    from percorso.automation.actions.errors import DeliveryError
    from percorso.automation.actions.run import _event

    contact = _contact_from(request, token)
    store = _store(request)
    now = datetime.now(UTC)

    def record(s: Session) -> None:
        s.execute(
            "INSERT INTO unsubscribes (contact_id, channel, unsubscribed_at, source) VALUES (?, 'email', ?, 'link') "
            "ON CONFLICT DO NOTHING",
            [contact, now],
        )

    # The unsubscribe is a touchpoint too: an `Unsubscribed` event on the contact's timeline,
    # stored once however often the link is used, in the same transaction as the unsubscribe.
    properties = {"channel": "email", "source": "link"}
    try:
        event = _event(
            request.app.state.engine,
            f"unsubscribe/{contact}/email",
            contact,
            "Unsubscribed",
            properties,
            "email",
        )
    except DeliveryError:  # no identifier left to attach it to (the contact was erased)
        with store.writing() as s:
            record(s)
    else:
        store.ingest([event], also=record)
    title, _, _, done = _TEXTS[_lang(request)]
    return HTMLResponse(_UNSUB_PAGE.format(lang=_lang(request), title=title, text=done, form=""))


async def _record(
    request: Request, key: str, message_id: str, event: str, properties: dict[str, Any]
) -> None:
    from percorso.automation.actions.errors import DeliveryError
    from percorso.automation.actions.run import _emit

    store = _store(request)
    with store.session() as s:
        rows = s.rows("SELECT contact_id, automation_key, step FROM outbox WHERE idempotency_key = ?", [key])
    if not rows:
        return
    contact, automation, step = rows[0]
    try:
        await asyncio.to_thread(
            _emit,
            _engine(request),
            message_id,
            int(contact),
            event,
            {"automation": automation, "step": step, **properties},
            "email",
        )
    except DeliveryError:
        return


@public.get(
    "/t/o/{token:path}",
    summary="Email open pixel: records an 'Email Opened' touchpoint",
    response_class=Response,
    responses={200: {"description": "A 1×1 GIF, whatever the token", "content": {"image/gif": {}}}},
)
async def opened(request: Request, token: str) -> Response:
    key = links.read(_engine(request).secret, links.MESSAGE, token)
    if key is not None:
        await _record(request, key, f"{key}:opened", "Email Opened", {})
    return Response(_PIXEL, media_type="image/gif", headers={"Cache-Control": "no-store"})


@public.get(
    "/t/c/{token:path}",
    summary="Tracked link: records an 'Email Link Clicked' touchpoint and redirects",
    response_class=RedirectResponse,
    status_code=302,
    responses=responses(
        {
            302: {
                "description": "To the link's target",
                "headers": {"Location": {"schema": {"type": "string"}}},
            }
        },
        NOT_FOUND,
    ),
)
async def clicked(request: Request, token: str, u: str, s: str) -> Response:
    secret = _engine(request).secret
    key = links.read(secret, links.MESSAGE, token)
    if key is None or not links.verify_signature(secret, links.LINK, u, s):
        raise _invalid_link()
    import hashlib

    link = hashlib.sha256(u.encode()).hexdigest()[:12]
    await _record(request, key, f"{key}:click:{link}", "Email Link Clicked", {"url": u})
    return RedirectResponse(u, status_code=302)


class Visitor(BaseModel):
    anonymousId: str = Field(description="the anonymous id to send every event of this browser with")
    token: str = Field(description="proves this browser holds that id: give it to GET /v1/messages")


@onsite.post(
    "/visitors",
    summary="A new anonymous id for a browser, with the token that lets it read its own on-site messages",
    status_code=201,
)
def new_visitor(request: Request) -> Visitor:
    """The server picks the id (random, 122 bits), so no one can ask for the token of an id that
    is already someone's: a page that guesses a userId or an anonymousId reads nothing."""
    anonymous_id = f"v-{uuid.uuid4()}"
    return Visitor(
        anonymousId=anonymous_id, token=links.sign(_engine(request).secret, links.VISITOR, anonymous_id)
    )


@onsite.get(
    "/messages",
    summary="On-site messages waiting for the visitor a token names (the browser tracker calls this)",
    responses=FORBIDDEN,
)
def messages(
    request: Request,
    token: Annotated[str, Query(max_length=400, description="the token POST /v1/visitors gave this browser")],
) -> dict[str, Any]:
    """The messages automations queued for the contact the visitor's anonymous id belongs to
    (after an identify, the known contact's), each once: they are marked shown as they are read."""
    anonymous_id = visitor_of(request, token)
    store = _store(request)
    now = datetime.now(UTC)
    with store.writing() as s:
        found = s.rows(
            "SELECT coalesce(c.merged_into, c.contact_id) FROM identities i JOIN contacts c ON c.contact_id = i.contact_id "
            "WHERE i.kind = 'anonymous_id' AND i.value = ?",
            [anonymous_id],
        )
        if not found:  # nothing sent with this id yet
            return {"messages": []}
        live = found[0][0]
        rows = s.dicts(
            "SELECT idempotency_key, message FROM onsite_messages WHERE shown_at IS NULL AND expires_at > ? "
            "AND (contact_id = ? OR contact_id IN (SELECT contact_id FROM contacts WHERE merged_into = ?)) "
            "ORDER BY created_at, idempotency_key",
            [now, live, live],
        )
        if rows:
            s.execute(
                f"UPDATE onsite_messages SET shown_at = ? WHERE idempotency_key IN ({', '.join('?' for _ in rows)})",
                [now, *[r["idempotency_key"] for r in rows]],
            )
    return {"messages": [{"id": r["idempotency_key"], **msgspec.json.decode(r["message"])} for r in rows]}


_SURVEY_TEXTS = {
    "en": (
        "Thank you!",
        "Your answer: {score}. Anything you would like to add?",
        "Send",
        "Thank you, we read every comment.",
    ),
    "it": (
        "Grazie!",
        "La tua risposta: {score}. Vuoi aggiungere qualcosa?",
        "Invia",
        "Grazie, leggiamo ogni commento.",
    ),
}


def _survey_link(request: Request, token: str) -> tuple[Any, int, str]:
    """The survey, contact and email a survey link names; 404 for anything not signed here."""
    from percorso.feedback.store import SurveyNotFound, get_survey

    value = links.read(_engine(request).secret, links.SURVEY, token)
    parts = value.split("|") if value else []
    if len(parts) != 3 or not parts[1].isdigit():
        raise _invalid_link()
    try:
        survey, _, _ = get_survey(_store(request), parts[0])
    except SurveyNotFound:
        raise _invalid_link() from None
    return survey, int(parts[1]), value or ""


def _survey_score(survey: Any, score: str | None) -> int:
    from percorso.feedback.definition import SCALES

    question = survey.scored()
    low, high = SCALES[question.kind] if question is not None else (0, 0)
    if question is None or score is None or not score.isdigit() or not low <= int(score) <= high:
        raise ApiError(400, "invalid_answer", f"score must be a whole number from {low} to {high}", "score")
    return int(score)


async def _record_answer(
    request: Request, message_id: str, contact: int, event: str, properties: dict[str, Any]
) -> None:
    from percorso.automation.actions.errors import DeliveryError
    from percorso.automation.actions.run import _event

    try:
        recorded = _event(_engine(request), message_id, contact, event, properties, "email")
    except DeliveryError:  # the contact was erased since the email went out
        raise _invalid_link() from None
    await request.app.state.writer.write([recorded])


@public.get(
    "/s/{token}",
    response_class=HTMLResponse,
    summary="Answer a survey's score from an email in one click, then add a comment",
    responses=NOT_FOUND,
)
async def survey_from_email(request: Request, token: str, score: str | None = None) -> HTMLResponse:
    """Records the score (the first click of each email counts), then offers a comment box."""
    from html import escape

    from percorso.analytics.feedback import ANSWERED

    survey, contact, value = _survey_link(request, token)
    chosen = _survey_score(survey, score)
    question = survey.scored()
    properties = {
        "survey": survey.key,
        "kind": question.kind,
        "score": chosen,
        "answers": {question.id: chosen},
        "via": "email",
    }
    for name in ("stage", "touchpoint"):
        if getattr(survey, name):
            properties[name] = getattr(survey, name)
    await _record_answer(request, f"survey-email/{value}", contact, ANSWERED, properties)
    lang = _lang(request)
    title, text, button, _ = _SURVEY_TEXTS[lang]
    form = (
        f'<form method="post"><input type="hidden" name="score" value="{chosen}">'
        '<textarea name="comment" rows="4" maxlength="2000" style="width:100%"></textarea>'
        f'<p><button type="submit">{escape(button)}</button></p></form>'
    )
    return HTMLResponse(
        _UNSUB_PAGE.format(lang=lang, title=title, text=escape(text.format(score=chosen)), form=form)
    )


@public.post(
    "/s/{token}",
    response_class=HTMLResponse,
    summary="Add a comment to a survey answered from an email",
    responses=NOT_FOUND,
)
async def survey_comment_from_email(request: Request, token: str) -> HTMLResponse:
    from percorso.analytics.feedback import COMMENTED

    survey, contact, value = _survey_link(request, token)
    form = await request.form()
    chosen = _survey_score(survey, str(form.get("score") or ""))
    comment = str(form.get("comment") or "").strip()
    if len(comment) > 2000:
        raise ApiError(400, "invalid_answer", "the comment is over 2,000 characters", "comment")
    if comment:
        properties = {"survey": survey.key, "score": chosen, "comment": comment, "via": "email"}
        await _record_answer(request, f"survey-email/{value}/comment", contact, COMMENTED, properties)
    lang = _lang(request)
    title, _, _, done = _SURVEY_TEXTS[lang]
    return HTMLResponse(_UNSUB_PAGE.format(lang=lang, title=title, text=done, form=""))
