"""Who is asking: the signed-in user behind a dashboard request, their role, and CSRF checks.

Pages answer an anonymous request with a redirect to the sign-in page; their JSON twins answer
401. Every state-changing request (POST) must carry the session's CSRF token, as the form field
``csrf_token`` or the ``X-CSRF-Token`` header (htmx sends the header).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request

from percorso.web.dashboard.users import WebSession, session_for

COOKIE = "percorso_session"


class SignInRequired(Exception):
    """Raised by page dependencies when there is no live session."""


class Forbidden(Exception):
    """The signed-in user's role does not allow this."""

    def __init__(self, role: str):
        super().__init__(role)
        self.role = role


class CsrfRejected(Exception):
    """A state-changing request without the session's CSRF token."""


def current_session(request: Request) -> WebSession | None:
    if "web_session" in request.state._state:
        cached: WebSession | None = request.state.web_session
        return cached
    token = request.cookies.get(COOKIE)
    found = session_for(request.app.state.store, token) if token else None
    request.state.web_session = found
    return found


def require(role: str = "viewer") -> Callable[[Request], Coroutine[Any, Any, WebSession]]:
    """A dependency: the live session, whose user has at least ``role``; POSTs must pass CSRF."""

    async def dependency(request: Request) -> WebSession:
        session = current_session(request)
        if session is None:
            raise SignInRequired()
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            sent = request.headers.get("x-csrf-token")
            if sent is None:
                form = await request.form()
                value = form.get("csrf_token")
                sent = value if isinstance(value, str) else None
            # Bytes, not str: compare_digest refuses non-ASCII text, and a forged header may hold it.
            if not sent or not hmac.compare_digest(sent.encode(), session.csrf_token.encode()):
                raise CsrfRejected()
        if not session.user.can(role):
            raise Forbidden(role)
        return session

    return dependency


# Assets are served from our own origin; data for charts travels in JSON script blocks, never as
# inline script, so a stray payload in an event name cannot run even if escaping were missed.
# Frames: the heatmap page shows the user's own site beneath its clicks, sandboxed (no scripts,
# no cookies of its own origin), so a page shown there can neither run nor track.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'; frame-src 'self' http: https:"
)


def secure_headers(headers: Any) -> None:
    headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Referrer-Policy"] = "same-origin"
    headers["X-Frame-Options"] = "DENY"
