"""Browsers on other sites: which web origins may send with a write key, and CORS for them.

A page on ``https://shop.example`` that loads analytics.js (or percorso.js) posts to percorso on
another origin. The browser asks first (a CORS preflight, ``OPTIONS``) when the request carries
an ``Authorization`` header, as analytics.js sends it, and reads an answer only if it names the
page's origin. Each write key lists the origins allowed to send with it (``percorso keys create
--origin https://shop.example``; ``*`` allows any, only where the user sets it); percorso's own
origin (the demo shop it serves) is always allowed. A request from any other origin is refused
with 403 before anything is stored, whatever kind of request the browser made.

A preflight names no key, so it is answered for an origin that some active write key allows;
the request that follows is checked against its own key.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

#: Paths a browser script calls: the Segment endpoints (long and analytics.js' short ones),
#: analytics.js' settings, on-site messages.
BROWSER_PATHS = frozenset(
    f"/v1/{name}"
    for name in (
        *("track", "identify", "page", "screen", "group", "alias", "batch"),
        *("t", "i", "p", "s", "g", "a", "b"),
        "messages",
        "visitors",
        "visitors/surveys",
    )
)
SETTINGS_PREFIX = "/v1/projects/"

ALLOWED_HEADERS = "Authorization, Content-Type, Content-Encoding, X-Retry-Count"
PREFLIGHT_SECONDS = "600"


class OriginError(ValueError):
    """An origin that is not ``*`` or ``scheme://host[:port]``."""


def normalise_origin(text: str) -> str:
    """``*`` or ``scheme://host[:port]`` (http or https), lower case, as browsers send it.

    Example: ``normalise_origin("https://Shop.Example/")`` → ``"https://shop.example"``."""
    value = text.strip()
    if value == "*":
        return value
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise OriginError(f"{text!r} is not an origin (scheme://host[:port])") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise OriginError(
            f"{text!r} is not an origin: use http:// or https:// and a host, e.g. https://shop.example"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        raise OriginError(f"{text!r} is not an origin: give only scheme://host[:port], no path")
    host = parts.hostname.lower()
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def own_origin(scheme: str, host_header: str | None) -> str | None:
    """The origin the server answers on, from the request it received."""
    return f"{scheme}://{host_header.lower()}" if host_header else None


def origin_allowed(allowed: tuple[str, ...] | set[str], origin: str, own: str | None) -> bool:
    return origin == own or "*" in allowed or origin in allowed


def browser_path(path: str) -> bool:
    """Whether a browser script calls ``path``: a Segment endpoint, analytics.js' settings,
    on-site messages and visitors, a survey's answers (``/v1/surveys/{key}/answers``)."""
    if path in BROWSER_PATHS or path.startswith(SETTINGS_PREFIX):
        return True
    return path.startswith("/v1/surveys/") and path.endswith("/answers")


def _header(scope: MutableMapping[str, Any], name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class BrowserCors:
    """ASGI middleware: preflights and CORS headers on the paths browsers call."""

    def __init__(self, app: Callable[..., Awaitable[None]]):
        self.app = app

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if not browser_path(path):
            await self.app(scope, receive, send)
            return
        origin = _header(scope, b"origin")
        if origin is None:  # not a browser on another site: nothing to add
            await self.app(scope, receive, send)
            return
        keys = scope["app"].state.keys
        allowed = origin_allowed(
            keys.browser_origins(), origin, own_origin(scope["scheme"], _header(scope, b"host"))
        )
        if scope["method"] == "OPTIONS" and _header(scope, b"access-control-request-method") is not None:
            await _preflight(send, origin if allowed else None)
            return
        if not allowed:
            await self.app(scope, receive, send)
            return

        async def send_with_cors(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"access-control-allow-origin", origin.encode("latin-1")),
                    (b"access-control-expose-headers", b"Retry-After"),
                    (b"vary", b"Origin"),
                ]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_cors)


async def _preflight(send: Send, origin: str | None) -> None:
    if origin is None:
        body = (
            b'{"success":false,"code":"origin_not_allowed","message":"no write key allows this origin: '
            b'add it with percorso keys origins KEY_ID ORIGIN"}'
        )
        headers = [(b"content-type", b"application/json"), (b"vary", b"Origin")]
        await send({"type": "http.response.start", "status": 403, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    headers = [
        (b"access-control-allow-origin", origin.encode("latin-1")),
        (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
        (b"access-control-allow-headers", ALLOWED_HEADERS.encode()),
        (b"access-control-max-age", PREFLIGHT_SECONDS.encode()),
        (b"vary", b"Origin"),
    ]
    await send({"type": "http.response.start", "status": 204, "headers": headers})
    await send({"type": "http.response.body", "body": b""})
