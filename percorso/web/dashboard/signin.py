"""Signing in and out, and the language switch.

``POST /login`` is defended three ways:

* **login CSRF**: ``GET /login`` sets a random pre-session cookie (HttpOnly, SameSite=Strict,
  ``__Host-`` on HTTPS) and puts the same value in the form as ``csrf_token``; a sign-in whose
  token does not match the cookie is refused with 403. Another site can neither read the value
  nor set the cookie, so it cannot sign a visitor in to an account of its choosing.
* **guessing**: each account has a few free failures, then lockouts that double up to a cap,
  and each client address a budget of failures per minute; while locked, even the right
  password answers 429 with ``Retry-After``. A success clears the account's failures.
* **cost**: a password over 1 KiB is refused before hashing, and at most one Argon2 check per
  core runs at once; a few more wait briefly, the rest get 503 and ``Retry-After``.

Failures are counted before the password is checked (and forgiven on success), so requests
sent at once cannot all slip in under the limit.
"""

from __future__ import annotations

import hmac
import logging
import math
import secrets
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Form, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.formparsers import FormParser, MultiPartException, MultiPartParser

from percorso.config import Settings
from percorso.store import Store
from percorso.web.dashboard.filters import PageError
from percorso.web.dashboard.i18n import COOKIE as LANG_COOKIE
from percorso.web.dashboard.i18n import LANGS, Translator
from percorso.web.dashboard.render import html, language
from percorso.web.dashboard.security import COOKIE, current_session, secure_headers
from percorso.web.dashboard.twins import Viewer
from percorso.web.dashboard.users import set_locale, sign_in, sign_out, user_count
from percorso.web.errors import error_body
from percorso.web.throttle import (
    Backoff,
    Busy,
    Gate,
    RateLimiter,
    client_address,
    cores,
    retry_after,
)

router = APIRouter(include_in_schema=False)
log = logging.getLogger("percorso.dashboard")

#: The cookie holding the sign-in form's token (``__Host-`` is added on HTTPS).
PRESESSION = "percorso_login"
PRESESSION_SECONDS = 12 * 3600
MAX_PASSWORD_BYTES = 1024
MAX_EMAIL = 320
MAX_NEXT = 2000
#: A sign-in form is three short fields and a token; anything bigger is refused unread.
MAX_FORM_BYTES = 8 * 1024


@dataclass
class SignInGuard:
    """The limits on sign-in attempts one server process keeps."""

    accounts: Backoff
    addresses: RateLimiter
    gate: Gate

    @classmethod
    def from_settings(cls, settings: Settings) -> SignInGuard:
        per_minute = settings.signin_address_per_minute
        slots = cores()
        return cls(
            accounts=Backoff(
                settings.signin_free_failures,
                settings.signin_lockout_seconds,
                settings.signin_lockout_max_seconds,
            ),
            addresses=RateLimiter(capacity=per_minute, rate=per_minute / 60),
            gate=Gate(slots, queue=4 * slots, patience=2.0),
        )

    def wait(self, account: str, address: str) -> tuple[float, str]:
        """Seconds before this account may try from this address, and the message key saying why."""
        locked = self.accounts.wait(account)
        if locked:
            return locked, "login.locked"
        return self.addresses.wait(address), "login.address_limited"


def guard_of(request: Request) -> SignInGuard:
    state = request.app.state
    guard: SignInGuard | None = getattr(state, "sign_in_guard", None)
    if guard is None:
        guard = state.sign_in_guard = SignInGuard.from_settings(state.settings)
    return guard


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def safe_next(target: str | None) -> str:
    """Only same-site paths: an attacker's link must not bounce a fresh sign-in to their site."""
    if not target or not target.startswith("/") or target.startswith("//") or urlsplit(target).netloc:
        return "/"
    return target


def cookie_secure(request: Request) -> bool:
    return request.url.scheme == "https" or request.app.state.settings.base_url.startswith("https://")


def _presession_name(request: Request) -> str:
    # On HTTPS the __Host- prefix stops a sibling subdomain from planting a token of its own.
    return f"__Host-{PRESESSION}" if cookie_secure(request) else PRESESSION


def _give_token(request: Request, response: Response, token: str) -> None:
    response.set_cookie(
        _presession_name(request),
        token,
        max_age=PRESESSION_SECONDS,
        path="/",
        httponly=True,
        samesite="strict",
        secure=cookie_secure(request),
    )


def _login_page(
    request: Request,
    *,
    status: int = 200,
    next: str = "/",
    error: str | None = None,
    email: str = "",
    lang: str | None = None,
    renew: bool = False,
    headers: dict[str, str] | None = None,
) -> Response:
    held = request.cookies.get(_presession_name(request))
    token = held if held and not renew else secrets.token_urlsafe(32)
    context = {
        "next": safe_next(next),
        "error": error,
        "email": email,
        "no_users": status == 200 and user_count(_store(request)) == 0,
        "login_token": token,
    }
    response = html(request, "login.html", context, status=status, lang=lang)
    if token != held:
        _give_token(request, response, token)
    response.headers.update(headers or {})
    return response


def _wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return bool(request.headers.get("hx-request")) or ("json" in accept and "text/html" not in accept)


def _wait_words(t: Translator, seconds: int) -> str:
    if seconds == 1:
        return t("time.second")
    if seconds < 120:
        return t("time.seconds", n=seconds)
    return t("time.minutes", n=math.ceil(seconds / 60))


def _refused(
    request: Request,
    status: int,
    code: str,
    key: str,
    *,
    field: str | None = None,
    email: str = "",
    next: str = "/",
    wait: float = 0.0,
    renew: bool = False,
) -> Response:
    """A refused sign-in: the form again with the reason (in the reader's language), or JSON."""
    headers: dict[str, str] = {}
    extra: dict[str, Any] = {}
    values: dict[str, Any] = {"max": f"{MAX_PASSWORD_BYTES:,}"}
    if wait:
        seconds = retry_after(wait)
        headers["Retry-After"] = str(seconds)
        extra = {
            "retry_after": seconds,
            "retry_at": (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat(timespec="seconds"),
        }
    if _wants_json(request):
        english = Translator("en")
        message = english(key, wait=_wait_words(english, extra.get("retry_after", 0)), **values)
        response = JSONResponse(
            error_body(code, message, field, **extra), status_code=status, headers=headers
        )
        secure_headers(response.headers)
        return response
    t = Translator(language(request))
    message = t(key, wait=_wait_words(t, extra.get("retry_after", 0)), **values)
    return _login_page(
        request, status=status, next=next, error=message, email=email, renew=renew, headers=headers
    )


async def _read_form(request: Request) -> FormData | None:
    """The posted form, or None when it is bigger than any sign-in form (it is not read further)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_FORM_BYTES:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return None

    async def stream() -> AsyncGenerator[bytes, None]:
        yield bytes(body)

    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        parser = MultiPartParser(request.headers, stream(), max_files=0, max_fields=10)
        return await parser.parse()
    return await FormParser(request.headers, stream()).parse()


def _field(form: FormData, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


# -- routes ---------------------------------------------------------------------------------------
@router.get("/login")
def login_form(request: Request, next: str = "/", lang: str | None = None) -> Response:
    if current_session(request) is not None:
        return RedirectResponse(safe_next(next), status_code=303)
    chosen = lang if lang in LANGS else None
    response = _login_page(request, next=next, lang=chosen)
    if chosen:
        response.set_cookie(LANG_COOKIE, chosen, max_age=365 * 86400, samesite="lax")
    return response


@router.post("/login")
async def login(request: Request) -> Response:
    try:
        form = await _read_form(request)
    except (MultiPartException, UnicodeDecodeError):
        form = None
    if form is None:
        return _refused(request, 400, "invalid_request", "login.too_long", field="password")
    email, password = _field(form, "email"), _field(form, "password")
    next = _field(form, "next") or "/"
    held = request.cookies.get(_presession_name(request))
    sent = _field(form, "csrf_token")
    # Bytes, not str: compare_digest refuses non-ASCII text, and a forged field may hold it.
    if not held or not sent or not hmac.compare_digest(sent.encode(), held.encode()):
        return _refused(request, 403, "csrf", "login.stale", field="csrf_token", email=email, renew=True)
    if len(password.encode()) > MAX_PASSWORD_BYTES or len(email) > MAX_EMAIL or len(next) > MAX_NEXT:
        field = "password" if len(password.encode()) > MAX_PASSWORD_BYTES else "email"
        return _refused(request, 400, "invalid_request", "login.too_long", field=field, next=next)
    if not email or not password:
        return _refused(request, 401, "unauthorized", "login.failed", email=email, next=next)
    guard = guard_of(request)
    account, address = email.strip().lower(), client_address(request)
    wait, why = guard.wait(account, address)
    if wait:
        return _refused(request, 429, "rate_limited", why, email=email, next=next, wait=wait)
    try:
        async with guard.gate.slot():
            wait, why = guard.wait(account, address)  # others may have failed while this one waited
            if wait:
                return _refused(request, 429, "rate_limited", why, email=email, next=next, wait=wait)
            guard.accounts.strike(account)
            guard.addresses.take(address)
            found = await run_in_threadpool(sign_in, _store(request), email, password)
    except Busy:
        return _refused(request, 503, "busy", "login.busy", email=email, next=next, wait=1)
    if found is None:
        locked = guard.accounts.wait(account)
        if locked:
            log.warning(
                "sign-in for %s locked for %d s after repeated failures (last from %s)",
                account,
                retry_after(locked),
                address,
            )
        return _refused(request, 401, "unauthorized", "login.failed", email=email, next=next)
    guard.accounts.clear(account)
    guard.addresses.give_back(address)
    token, session = found
    response = RedirectResponse(safe_next(next), status_code=303)
    response.set_cookie(
        COOKIE,
        token,
        max_age=int((session.expires_at - datetime.now(UTC)).total_seconds()),
        httponly=True,
        samesite="lax",
        secure=cookie_secure(request),
    )
    response.delete_cookie(_presession_name(request), path="/", secure=cookie_secure(request))
    return response


@router.post("/logout")
def logout(request: Request, session: Viewer) -> Response:
    token = request.cookies.get(COOKIE)
    if token:
        sign_out(_store(request), token)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE)
    return response


@router.post("/lang")
def switch_language(
    request: Request, session: Viewer, lang: Annotated[str, Form()], next: Annotated[str, Form()] = "/"
) -> Response:
    if lang not in LANGS:
        raise PageError(f"language must be one of {', '.join(LANGS)}, not {lang!r}", "lang")
    set_locale(_store(request), session.user.email, lang)
    response = RedirectResponse(safe_next(next), status_code=303)
    response.set_cookie(LANG_COOKIE, lang, max_age=365 * 86400, samesite="lax")
    return response
