"""Dashboard pages: contacts — search, a contact's story on one page, export and erasure.

The list is the REST search (``/v1/contacts``) with the same filters and cursor. A contact's page
mixes their touchpoints (web visits, emails, store visits, calls, survey answers …) with the
automation steps that touched them, newest first, one page of the timeline at a time.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from percorso.analytics.customer import customer_summary
from percorso.analytics.stages import StageError, contact_stages, get_journey, list_journeys
from percorso.automation.stats import contact_automations
from percorso.automation.store import list_automations
from percorso.events import iso_utc
from percorso.journey.definition import Journey, display
from percorso.store.contacts import (
    BadQuery,
    ContactNotFound,
    ContactQuery,
    contact_profile,
    contact_timeline,
    cursor_time,
    decode_cursor,
    erase_contact,
    export_contact,
    search_contacts,
)
from percorso.web.dashboard.automations import automation_name
from percorso.web.dashboard.filters import PageError
from percorso.web.dashboard.render import language, page
from percorso.web.dashboard.security import secure_headers
from percorso.web.dashboard.twins import Admin, Viewer, both_on, store_of

log = logging.getLogger("percorso.dashboard")
router = APIRouter(include_in_schema=False)
both = both_on(router)

PAGE_SIZE = 50
TIMELINE_SIZE = 100
MAX_ID = 2**63 - 1
#: Channels the timeline names by what happened there (anything else is a customer action).
KIND_BY_CHANNEL = {
    "email": "email",
    "store": "store",
    "call-center": "call",
    "phone": "call",
    "call": "call",
    "survey": "survey",
    "support": "support",
}


# -- the timeline (pure) --------------------------------------------------------------------------
def touchpoint_kind(event: dict[str, Any]) -> str:
    """What kind of moment an event was, for the timeline: visit, email, store, call, survey …"""
    kind = event.get("type")
    name = str(event.get("event") or "")
    if kind in ("page", "screen"):
        return "visit"
    if kind in ("identify", "alias", "group"):
        return "profile"
    by_channel = KIND_BY_CHANNEL.get(str(event.get("channel") or ""))
    if by_channel:
        return by_channel
    if name.startswith("Email "):
        return "email"
    if name.startswith("Survey") or "nps" in str((event.get("properties") or {}).get("survey", "")).lower():
        return "survey"
    return "action"


def _what(event: dict[str, Any]) -> str:
    properties = event.get("properties") or {}
    if event.get("type") in ("page", "screen"):
        return str(event.get("name") or properties.get("path") or properties.get("url") or event["type"])
    return str(event.get("event") or event.get("name") or event["type"])


def _details(values: dict[str, Any], limit: int = 8) -> list[list[str]]:
    """A few ``name: value`` pairs to show under a moment (all text is escaped by the template):
    nested objects read as ``answers.score 9``, lists of plain values as ``a, b``, lists of
    objects by position (``products.1.name``), never as JSON."""
    pairs: list[tuple[str, Any]] = []

    def walk(key: str, value: Any) -> None:
        if len(pairs) >= limit:
            return
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{key}.{k}" if key else str(k), v)
        elif isinstance(value, list) and any(isinstance(v, dict | list) for v in value):
            for i, v in enumerate(value, 1):
                walk(f"{key}.{i}", v)
        elif isinstance(value, list):
            pairs.append((key, ", ".join("–" if v is None else str(v) for v in value)))
        else:
            pairs.append(
                (
                    key,
                    "–"
                    if value is None
                    else value
                    if isinstance(value, str)
                    else json.dumps(value, default=str),
                )
            )

    walk("", values)
    return [[k, v if len(v) <= 160 else v[:159] + "…"] for k, v in pairs[:limit]]


def _stamp(value: str) -> datetime:
    return datetime.fromisoformat(value).astimezone(UTC)


def merge_timeline(
    events: list[dict[str, Any]],
    steps: list[dict[str, Any]],
    *,
    newer_than: datetime | None,
    before: datetime | None,
    names: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Touchpoints and automation steps in one list, newest first.

    ``events`` is one page of the contact's timeline; the automation steps merged in are those in
    the same span of time — at or after ``newer_than`` (the oldest event shown, when older pages
    follow) and before ``before`` (where the previous page stopped) — so that paging through the
    timeline shows every step exactly once.
    """
    ranked: list[tuple[tuple[datetime, bool, int], dict[str, Any]]] = []
    for position, e in enumerate(events):  # newest first: a later position is older
        item = {
            "at": e["timestamp"],
            "source": "touchpoint",
            "kind": touchpoint_kind(e),
            "type": e["type"],
            "what": _what(e),
            "channel": e.get("channel"),
            "details": _details(e.get("properties") or e.get("traits") or {}),
            "message_id": e["messageId"],
        }
        ranked.append(((_stamp(e["timestamp"]), False, -position), item))
    for position, step in enumerate(steps):  # oldest first, as the engine logged them
        at = _stamp(step["at"])
        if (newer_than is not None and at < newer_than) or (before is not None and at >= before):
            continue
        item = {
            "at": iso_utc(at),
            "source": "automation",
            "kind": "automation",
            "automation": step["automation"],
            "automation_name": (names or {}).get(step["automation"], step["automation"]),
            "step": step["step"],
            "outcome": step["outcome"],
            "detail": step["detail"],
            "until": _until(step),
            "variant": step["variant"],
            "enrollment": step["enrollment"],
        }
        ranked.append(((at, True, position), item))
    # Newest first; within one instant the engine's steps in reverse order of logging, above the
    # touchpoint that triggered them.
    ranked.sort(key=lambda pair: pair[0], reverse=True)
    return [item for _, item in ranked]


def _until(step: dict[str, Any]) -> str | None:
    """When a waiting contact moves on (the engine logs it as the wait's detail)."""
    if step["outcome"] != "waiting" or not step["detail"]:
        return None
    try:
        return iso_utc(_stamp(str(step["detail"])))
    except ValueError:
        return None


# -- pages ----------------------------------------------------------------------------------------
def _contact_id(text: str) -> int:
    value = text.strip().lstrip("#")
    if not value.isdigit() or not 1 <= int(value) <= MAX_ID:
        raise PageError(f"there is no contact {text!r}: contact ids are whole numbers", "contact_id", 404)
    return int(value)


def _not_found(contact_id: object) -> PageError:
    return PageError(f"there is no contact {contact_id} (it may have been erased)", "contact_id", 404)


def _search(request: Request) -> tuple[ContactQuery, dict[str, Any]]:
    params = request.query_params
    traits: list[tuple[str, str]] = []
    for key, value in params.multi_items():
        if key.startswith("trait.") and value:
            traits.append((key[6:], value))
        elif key == "trait" and value.strip():
            name, sep, wanted = value.partition("=")
            if not sep or not name.strip():
                raise PageError(
                    f"write a trait filter as name=value (e.g. plan=member), not {value!r}", "trait"
                )
            traits.append((name.strip(), wanted.strip()))
    known_text = params.get("known") or ""
    if known_text not in ("", "yes", "no"):
        raise PageError("known is yes, no or empty", "known")
    limit_text = params.get("limit") or str(PAGE_SIZE)
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= 200:
        raise PageError("limit is a number from 1 to 200", "limit")
    text = {k: (params.get(k) or "").strip() or None for k in ("q", "email", "channel", "cursor")}
    for field, longest in (("q", 200), ("email", 320), ("channel", 40), ("cursor", 400)):
        if len(text[field] or "") > longest:
            raise PageError(f"{field} is longer than {longest} characters", field)
    if text["q"] and text["q"].startswith("#") and text["q"][1:].isdigit():
        text["q"] = text["q"][1:]  # "#42", as ids are shown, finds contact 42
    query = ContactQuery(
        email=text["email"],
        q=text["q"],
        traits=tuple(traits),
        channel=text["channel"],
        known={"yes": True, "no": False}.get(known_text),
        limit=int(limit_text),
        cursor=text["cursor"],
    )
    shown = {
        "q": query.q,
        "email": query.email,
        "traits": [[k, v] for k, v in traits],
        "channel": query.channel,
        "known": known_text or None,
        "limit": query.limit,
        "cursor": query.cursor,
    }
    return query, shown


@both("/contacts")
def contacts_page(request: Request, session: Viewer) -> Response:
    query, shown = _search(request)
    try:
        result = search_contacts(store_of(request), query)
    except BadQuery as exc:
        raise PageError(str(exc), exc.field) from None
    erased = request.query_params.get("erased") or ""
    data = {
        "filters": shown,
        "contacts": result["contacts"],
        "next_cursor": result["next_cursor"],
        "notice": {"erased": int(erased)} if erased.isdigit() else None,
    }
    return page(request, "contacts.html", data, active="contacts")


def _journey(request: Request) -> tuple[Journey | None, list[str]]:
    """The journey the page shows the contact in (``?journey=``, else the first) and all keys."""
    store = store_of(request)
    journeys = [str(j["key"]) for j in list_journeys(store)]
    if not journeys:
        return None, []
    wanted = request.query_params.get("journey") or journeys[0]
    try:
        return get_journey(store, wanted), journeys
    except StageError as exc:
        raise PageError(str(exc), "journey", 404) from None


def _stages(
    request: Request, journey: Journey, journeys: list[str], contact_id: int, lang: str
) -> dict[str, Any]:
    store = store_of(request)
    names = {s.key: display(s.name, lang) for s in journey.stages}
    entries = []
    for row in contact_stages(store, journey, contact_id):
        left = row["left_at"]
        entries.append(
            {
                "stage": row["stage"],
                "name": names.get(row["stage"], row["stage"]),
                "index": int(row["stage_index"]),
                "entered_at": iso_utc(row["entered_at"]),
                "left_at": iso_utc(left),
                "seconds": (left - row["entered_at"]).total_seconds() if left is not None else None,
                "channel": row["channel"],
            }
        )
    return {
        "journey": journey.key,
        "name": display(journey.name, lang),
        "journeys": journeys,
        "entries": entries,
    }


@both("/contacts/{contact_id}")
def contact_page(request: Request, session: Viewer, contact_id: str) -> Response:
    wanted = _contact_id(contact_id)
    store = store_of(request)
    lang = language(request)
    cursor = request.query_params.get("cursor") or None
    channel = request.query_params.get("channel") or None
    if len(cursor or "") > 400 or len(channel or "") > 40:
        raise PageError("cursor or channel is too long: use the links on the page", "cursor")
    try:
        profile = contact_profile(store, wanted)
        live = int(profile["id"])
        timeline = contact_timeline(store, live, limit=TIMELINE_SIZE, cursor=cursor, channel=channel)
        steps = contact_automations(store, live)
        journey, journeys = _journey(request)
        summary = customer_summary(store, journey, live, now=datetime.now(UTC), lang=lang)
    except ContactNotFound:
        raise _not_found(wanted) from None
    except BadQuery as exc:
        raise PageError(str(exc), exc.field) from None
    except LookupError:  # erased between the queries
        raise _not_found(wanted) from None
    events = timeline["events"]
    newer_than = _stamp(events[-1]["timestamp"]) if timeline["next_cursor"] and events else None
    before = cursor_time(decode_cursor(cursor, 2)[0]) if cursor else None
    names = {a["key"]: automation_name(a["name"], lang) for a in list_automations(store)} if steps else {}
    touched = sorted({s["automation"] for s in steps})
    data = {
        "contact": profile,
        "summary": summary,
        "stages": _stages(request, journey, journeys, live, lang) if journey else None,
        "automations": [{"key": k, "name": names.get(k, k)} for k in touched],
        "timeline": merge_timeline(
            events, [] if channel else steps, newer_than=newer_than, before=before, names=names
        ),
        "timeline_channel": channel,
        "next_cursor": timeline["next_cursor"],
        "cursor": cursor,
    }
    return page(request, "contact.html", data, active="contacts")


@router.get("/contacts/{contact_id}/export")
def export(request: Request, session: Admin, contact_id: str) -> Response:
    wanted = _contact_id(contact_id)
    try:
        data = export_contact(store_of(request), wanted)
    except ContactNotFound:
        raise _not_found(wanted) from None
    live = data["contact"]["id"]
    log.info("contact %s exported by %s", live, session.user.email)
    response = Response(
        json.dumps(data, ensure_ascii=False, indent=2, default=str),
        media_type="application/json",
        headers={
            "Content-Disposition": f'attachment; filename="percorso-contact-{live}.json"',
            "Cache-Control": "no-store",
        },
    )
    secure_headers(response.headers)
    return response


@router.post("/contacts/{contact_id}/erase")
def erase(
    request: Request,
    session: Admin,
    contact_id: str,
    confirm: Annotated[str, Form(max_length=40)] = "",
) -> Response:
    wanted = _contact_id(contact_id)
    typed = confirm.strip().lstrip("#")
    if typed != str(wanted):
        raise PageError(
            f"to erase contact {wanted}, type its id ({wanted}) in the confirmation box", "confirm"
        )
    try:
        result = erase_contact(store_of(request), wanted)
    except ContactNotFound:
        raise _not_found(wanted) from None
    log.info(
        "contact %s erased by %s (%s events, %s identifiers)",
        result["erased"],
        session.user.email,
        result["events"],
        result["identities"],
    )
    request.app.state.dashboard_cache.clear()
    return RedirectResponse(f"/contacts?erased={int(result['erased'])}", status_code=303)
