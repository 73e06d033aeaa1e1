"""Pages and their JSON twins from one data dict: ``/map`` renders it, ``/map.json`` returns it."""

from __future__ import annotations

import json
from datetime import date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.templating import Jinja2Templates
from markupsafe import Markup

from percorso import __version__
from percorso.web.dashboard.i18n import COOKIE as LANG_COOKIE
from percorso.web.dashboard.i18n import LANGS, Translator, negotiate
from percorso.web.dashboard.security import current_session, secure_headers

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent.parent / "templates"))

NAV = (
    ("overview", "/"),
    ("map", "/map"),
    ("opportunities", "/opportunities"),
    ("funnels", "/funnels"),
    ("paths", "/paths"),
    ("attribution", "/attribution"),
    ("contacts", "/contacts"),
    ("automations", "/automations"),
    ("experiments", "/experiments"),
    ("surveys", "/surveys"),
    ("heatmaps", "/heatmaps"),
    ("settings", "/settings"),
)


def _default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def to_json(value: Any) -> Markup:
    """JSON for a ``<script type="application/json">`` block: ``<``, ``>`` and ``&`` escaped."""
    text = json.dumps(value, default=_default, ensure_ascii=False)
    # Safe to mark: with these three escaped, no string can close the script block.
    return Markup(text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


TEMPLATES.env.filters["json_block"] = to_json


def language(request: Request) -> str:
    chosen = request.cookies.get(LANG_COOKIE)
    if chosen in LANGS:
        return str(chosen)
    session = current_session(request)
    if session and session.user.locale in LANGS:
        return str(session.user.locale)
    return negotiate(request.headers.get("accept-language"))


def wants_json(request: Request) -> bool:
    return request.url.path.endswith(".json")


def query_with(request: Request, **changes: Any) -> str:
    """The current query string with some parameters replaced (None removes one)."""
    params = [(k, v) for k, v in request.query_params.multi_items() if k not in changes]
    for key, value in changes.items():
        if value is None:
            continue
        if isinstance(value, list | tuple):
            params.extend((key, str(v)) for v in value)
        else:
            params.append((key, str(value)))
    return "?" + urlencode(params) if params else ""


def page(
    request: Request, template: str, data: dict[str, Any], *, status: int = 200, active: str = ""
) -> Response:
    """Renders ``template`` with ``data``, or returns ``data`` itself at the page's ``.json`` twin."""
    if wants_json(request):
        response: Response = JSONResponse(json.loads(json.dumps(data, default=_default)), status_code=status)
    else:
        response = html(request, template, {"data": data, **data}, status=status, active=active)
    secure_headers(response.headers)
    return response


def html(
    request: Request,
    template: str,
    context: dict[str, Any],
    *,
    status: int = 200,
    active: str = "",
    lang: str | None = None,
) -> HTMLResponse:
    lang = lang or language(request)
    session = current_session(request)
    context = {
        "request": request,
        "t": Translator(lang),
        "lang": lang,
        "langs": LANGS,
        "user": session.user if session else None,
        "csrf": session.csrf_token if session else "",
        "nav": NAV,
        "active": active,
        "app_version": __version__,  # not "version": pages have versions of their own (automations)
        "query_with": lambda **kw: query_with(request, **kw),
        **context,
    }
    response = TEMPLATES.TemplateResponse(request, template, context, status_code=status)
    secure_headers(response.headers)
    return response
