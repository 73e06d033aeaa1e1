"""Contacts REST API (secret key): search, profile, timeline, export, erasure, consent."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request

from percorso.identity import ANONYMOUS_ID, EMAIL, USER_ID
from percorso.store.contacts import (
    BadQuery,
    ContactQuery,
    contact_profile,
    contact_timeline,
    erase_contact,
    export_contact,
    find_contact,
    search_contacts,
    set_consent,
)
from percorso.web.auth import require_secret
from percorso.web.openapi import DOCUMENT_SECRET_KEY, NOT_FOUND, SECRET_KEY, DateTime, RequestBody

router = APIRouter(
    prefix="/v1/contacts",
    tags=["contacts"],
    dependencies=[Depends(require_secret), *DOCUMENT_SECRET_KEY],
    responses=SECRET_KEY,
)

ContactId = Annotated[
    int, Path(ge=1, le=2**63 - 1, description="A contact id (a merged id answers with its survivor)")
]
Email = Annotated[
    str | None, Query(max_length=254, json_schema_extra={"format": "email"}, description="an email address")
]
Cursor = Annotated[
    str | None,
    Query(
        max_length=400,
        description="opaque: the `next_cursor` of the previous page; any other value is refused with 400",
    ),
]


@router.get("", summary="Search contacts")
def list_contacts(
    request: Request,
    email: Email = None,
    q: Annotated[str | None, Query(max_length=200, description="substring of any identifier")] = None,
    channel: Annotated[str | None, Query(max_length=40)] = None,
    first_seen_after: DateTime | None = None,
    first_seen_before: DateTime | None = None,
    last_seen_after: DateTime | None = None,
    last_seen_before: DateTime | None = None,
    known: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: Cursor = None,
) -> dict[str, Any]:
    """Filter by trait with ``trait.<name>=<value>`` (repeatable), e.g. ``?trait.plan=member``."""
    traits = tuple((k[6:], v) for k, v in request.query_params.multi_items() if k.startswith("trait."))
    query = ContactQuery(
        email=email,
        q=q,
        traits=traits,
        channel=channel,
        first_seen_after=first_seen_after,
        first_seen_before=first_seen_before,
        last_seen_after=last_seen_after,
        last_seen_before=last_seen_before,
        known=known,
        limit=limit,
        cursor=cursor,
    )
    return search_contacts(request.app.state.store, query)


list_contacts.query_prefixes = ("trait.",)  # type: ignore[attr-defined]


@router.get("/lookup", summary="Find the contact an identifier belongs to", responses=NOT_FOUND)
def lookup(
    request: Request, email: Email = None, userId: str | None = None, anonymousId: str | None = None
) -> dict[str, Any]:
    """Give exactly one of ``email``, ``userId`` or ``anonymousId``."""
    given = [(k, v) for k, v in ((EMAIL, email), (USER_ID, userId), (ANONYMOUS_ID, anonymousId)) if v]
    if len(given) != 1:
        raise BadQuery("email", "give exactly one of email, userId or anonymousId")
    store = request.app.state.store
    return contact_profile(store, find_contact(store, *given[0]))


@router.get("/{contact_id:int}", summary="A contact's profile", responses=NOT_FOUND)
def profile(request: Request, contact_id: ContactId) -> dict[str, Any]:
    return contact_profile(request.app.state.store, contact_id)


@router.get(
    "/{contact_id:int}/timeline", summary="A contact's touchpoints, newest first", responses=NOT_FOUND
)
def timeline(
    request: Request,
    contact_id: ContactId,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: Cursor = None,
    channel: Annotated[str | None, Query(max_length=40)] = None,
) -> dict[str, Any]:
    return contact_timeline(request.app.state.store, contact_id, limit=limit, cursor=cursor, channel=channel)


@router.get(
    "/{contact_id:int}/export",
    summary="Everything held on a contact (data-subject access)",
    responses=NOT_FOUND,
)
def export(request: Request, contact_id: ContactId) -> dict[str, Any]:
    return export_contact(request.app.state.store, contact_id)


@router.delete(
    "/{contact_id:int}", summary="Erase a contact: events, identifiers and traits", responses=NOT_FOUND
)
def erase(request: Request, contact_id: ContactId) -> dict[str, Any]:
    return erase_contact(request.app.state.store, contact_id)


class ConsentBody(RequestBody):
    consent: Literal["granted", "denied"]


@router.put("/{contact_id:int}/consent", summary="Record a contact's marketing consent", responses=NOT_FOUND)
def consent(request: Request, contact_id: ContactId, body: ConsentBody) -> dict[str, Any]:
    return set_consent(request.app.state.store, contact_id, body.consent)
