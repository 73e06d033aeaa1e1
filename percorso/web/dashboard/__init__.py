"""The dashboard: server-rendered pages (Jinja2 + htmx + ECharts, all assets vendored) over the
same analytics the REST API and the CLI use. See docs/dashboard.md."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from percorso.web.dashboard.cache import ResultCache
from percorso.web.dashboard.filters import PageError
from percorso.web.dashboard.render import html, wants_json
from percorso.web.dashboard.security import CsrfRejected, Forbidden, SignInRequired
from percorso.web.errors import error_body

log = logging.getLogger("percorso.dashboard")
STATIC = Path(__file__).parent.parent / "static"


def install(app: FastAPI, cache_seconds: float = 60.0, dependencies: Sequence[Any] = ()) -> None:
    """Adds the dashboard's pages, assets and error pages to ``app``."""
    from percorso.web.dashboard import (
        analysis,
        automations,
        contacts,
        export,
        heatmaps,
        opportunities,
        pages,
        reach,
        settings,
        signin,
        surveys,
    )

    app.state.dashboard_cache = ResultCache(ttl=cache_seconds)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    for module in (
        signin,
        pages,
        export,
        analysis,
        contacts,
        reach,
        automations,
        surveys,
        heatmaps,
        opportunities,
        settings,
    ):
        app.include_router(module.router, dependencies=list(dependencies))

    def _json_or_page(request: Request, status: int, code: str, message: str, field: str | None) -> Response:
        if wants_json(request) or request.headers.get("hx-request"):
            return JSONResponse(error_body(code, message, field), status_code=status)
        return html(
            request, "error.html", {"status": status, "message": message, "field": field}, status=status
        )

    @app.exception_handler(SignInRequired)
    async def sign_in_required(request: Request, _: SignInRequired) -> Response:
        if wants_json(request) or request.method != "GET":
            return JSONResponse(
                error_body(
                    "unauthorized",
                    "sign in first: GET /login, then POST /login with email, password and the form's "
                    "csrf_token (its pre-session cookie too)",
                ),
                status_code=401,
            )
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(target)}", status_code=303)

    @app.exception_handler(Forbidden)
    async def forbidden(request: Request, exc: Forbidden) -> Response:
        return _json_or_page(request, 403, "forbidden", f"this needs the {exc.role} role", None)

    @app.exception_handler(CsrfRejected)
    async def csrf(request: Request, _: CsrfRejected) -> Response:
        return _json_or_page(
            request,
            403,
            "csrf",
            "the form is missing its security token or it is stale: reload the page",
            None,
        )

    @app.exception_handler(PageError)
    async def page_error(request: Request, exc: PageError) -> Response:
        return _json_or_page(request, exc.status, "invalid_request", exc.message, exc.field)


def warm(app: FastAPI) -> threading.Thread:
    """Computes the default journey map in the background so the first visit is fast."""

    def run() -> None:
        from percorso.web.dashboard.filters import Filters, period, stored_journeys

        store = app.state.store
        try:
            journeys = stored_journeys(store)
            if not journeys:
                return
            from starlette.requests import Request as StarletteRequest

            request = StarletteRequest({"type": "http", "query_string": b"", "headers": [], "app": app})
            filters = Filters(journeys[0], journeys, None, period(request), None, None, False)
            from percorso.web.dashboard.pages import cached_map

            for lang in ("en", "it"):
                cached_map(request, filters, lang)
        except Exception:  # a warm-up is an optimisation: a failure only means a slower first page
            log.exception("warming the dashboard cache failed")

    thread = threading.Thread(target=run, name="percorso-dashboard-warm", daemon=True)
    thread.start()
    return thread
