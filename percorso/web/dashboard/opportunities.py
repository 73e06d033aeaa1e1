"""Dashboard: opportunities — planned from a pain point on the journey map (or for a stage), listed
on the map's opportunities lane and on their own page (the team's backlog, with a JSON twin),
where editors change their status, priority and owner."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from percorso.analytics.stages import StageError, get_journey
from percorso.journey.definition import display
from percorso.opportunities import (
    PRIORITIES,
    STATUSES,
    OpportunityError,
    add_opportunity,
    list_opportunities,
    update_opportunity,
)
from percorso.web.dashboard.filters import PageError
from percorso.web.dashboard.render import language, page
from percorso.web.dashboard.signin import safe_next
from percorso.web.dashboard.twins import Editor, Viewer, both_on, store_of
from percorso.web.dashboard.users import list_users

log = logging.getLogger("percorso.dashboard")
router = APIRouter(include_in_schema=False)
both = both_on(router)


def team(request: Request) -> list[dict[str, str]]:
    """The users an opportunity may be given to."""
    return [
        {"email": str(u["email"]), "name": str(u.get("name") or u["email"])}
        for u in list_users(store_of(request))
        if u.get("disabled_at") is None
    ]


def _page_error(exc: OpportunityError) -> PageError:
    return PageError(exc.message, exc.field, exc.status)


@router.post("/map/opportunities")
def plan(
    request: Request,
    session: Editor,
    journey: Annotated[str, Form(max_length=63)],
    title: Annotated[str, Form(max_length=2000)],
    stage: Annotated[str, Form(max_length=63)] = "",
    pain_key: Annotated[str, Form(max_length=600)] = "",
    pain_summary: Annotated[str, Form(max_length=2000)] = "",
    owner: Annotated[str, Form(max_length=200)] = "",
    priority: Annotated[str, Form(max_length=20)] = "medium",
    next: Annotated[str, Form(max_length=2000)] = "/map",
) -> Response:
    try:
        added = add_opportunity(
            store_of(request),
            journey,
            stage or None,
            title,
            by=session.user.email,
            pain_key=pain_key or None,
            pain_summary=pain_summary or None,
            owner=owner or None,
            priority=priority,
        )
    except OpportunityError as exc:
        raise _page_error(exc) from None
    log.info("opportunity %s planned on %s/%s by %s", added["id"], journey, stage, session.user.email)
    request.app.state.dashboard_cache.clear()
    return RedirectResponse(safe_next(next), status_code=303)


@router.post("/opportunities/{opportunity_id}")
async def change(request: Request, session: Editor, opportunity_id: str) -> Response:
    form = await request.form()
    values = {
        k: str(v)
        for k, v in form.items()
        if k in ("title", "owner", "priority", "status") and isinstance(v, str)
    }
    unknown = sorted(set(form.keys()) - {"title", "owner", "priority", "status", "next", "csrf_token"})
    if unknown:
        raise PageError(f"{unknown[0]!r} is not a field of an opportunity", unknown[0])
    try:
        changed = update_opportunity(store_of(request), opportunity_id[:40], values)
    except OpportunityError as exc:
        raise _page_error(exc) from None
    log.info(
        "opportunity %s changed (%s) by %s", changed["id"], ", ".join(sorted(values)), session.user.email
    )
    request.app.state.dashboard_cache.clear()
    target = form.get("next")
    return RedirectResponse(
        safe_next(target if isinstance(target, str) else "/opportunities"), status_code=303
    )


@both("/opportunities")
def opportunities_page(request: Request, session: Viewer) -> Response:
    q = request.query_params
    status = q.get("status") or "open"
    owner = q.get("owner") or None
    journey = q.get("journey") or None
    store = store_of(request)
    try:
        rows = list_opportunities(store, journey, status=None if status == "all" else status, owner=owner)
    except OpportunityError as exc:
        raise _page_error(exc) from None
    names = {}
    for key in sorted({r["journey"] for r in rows}):
        try:
            names[key] = display(get_journey(store, key).name, language(request))
        except StageError:
            names[key] = key  # removed since
    data: dict[str, Any] = {
        "opportunities": rows,
        "filters": {"status": status, "owner": owner, "journey": journey},
        "statuses": STATUSES,
        "priorities": PRIORITIES,
        "team": team(request),
        "journeys": names,
    }
    return page(request, "opportunities.html", data, active="opportunities")
