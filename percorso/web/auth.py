"""Request authentication with API keys (see collect/keys.py)."""

from __future__ import annotations

import types
import typing
from collections.abc import Sequence
from typing import Any

from fastapi import Request

from percorso.collect.browser import origin_allowed, own_origin
from percorso.collect.keys import KeyRing, credential_from_header
from percorso.store import ApiKey
from percorso.web.errors import ApiError
from percorso.web.throttle import RateLimiter, retry_after


def authenticate(request: Request, body_key: str | None = None, *, secret: bool = False) -> ApiKey:
    keys: KeyRing = request.app.state.keys
    credential = credential_from_header(request.headers.get("authorization")) or body_key
    if not credential:
        raise ApiError(
            401,
            "unauthorized",
            "an API key is required: send it as the HTTP Basic username (as Segment libraries do), "
            "as a Bearer token, or as writeKey in the body",
        )
    key = keys.lookup(credential)
    if key is None:
        raise ApiError(401, "unauthorized", "unknown or revoked API key")
    if secret and key.kind != "secret":
        raise ApiError(403, "forbidden", "this endpoint needs a secret key; write keys can only send data")
    origin = request.headers.get("origin")
    if origin is not None and key.kind == "write":
        own = own_origin(request.url.scheme, request.headers.get("host"))
        if not origin_allowed(key.origins, origin, own):
            shown = origin[:100]
            raise ApiError(
                403,
                "origin_not_allowed",
                f"write key {key.key_id} does not allow pages on {shown!r} to send with it: "
                f"add the origin with `percorso keys origins {key.key_id} {shown}` or PUT /v1/keys/{key.key_id}/origins",
                "origin",
            )
    return key


def require_secret(request: Request) -> ApiKey:
    """FastAPI dependency for read and admin endpoints."""
    key = authenticate(request, secret=True)
    single_query_values(request)
    return key


def require_write(request: Request) -> ApiKey:
    """FastAPI dependency for what the browser tracker may call with its write key."""
    key = authenticate(request)
    single_query_values(request)
    return key


def _is_list(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_is_list(arg) for arg in typing.get_args(annotation))
    return isinstance(origin, type) and issubclass(origin, Sequence) and origin not in (str, bytes)


def single_query_values(request: Request) -> None:
    """A 400 for a query parameter the endpoint does not take (a misspelt ``url_rule=`` would
    otherwise answer as if no rule was given), or one that takes one value given several times
    (``?userId=a&userId=b``): which one counts would otherwise be a guess. An endpoint that
    reads a family of parameters itself names their prefixes in ``query_prefixes``."""
    dependant = getattr(request.scope.get("route"), "dependant", None)
    if dependant is None:
        return
    pending, params = [dependant], []
    while pending:
        current = pending.pop()
        params.extend(current.query_params)
        pending.extend(current.dependencies)
    known = {param.alias for param in params}
    prefixes: tuple[str, ...] = getattr(request.scope["route"].endpoint, "query_prefixes", ())
    for name in request.query_params:
        if name in known or (prefixes and name.startswith(prefixes)):
            continue
        takes = ", ".join(sorted(known) + [f"{p}KEY" for p in prefixes]) or "none"
        raise ApiError(
            400,
            "invalid_request",
            f"unknown query parameter {name[:60]!r}; this endpoint takes: {takes}",
            name[:60],
        )
    for param in params:
        given = len(request.query_params.getlist(param.alias))
        if given > 1 and not _is_list(param.field_info.annotation):
            raise ApiError(
                400,
                "invalid_request",
                f"the query parameter {param.alias} is given {given} times; it takes one value",
                param.alias,
            )


def _collect_limiter(request: Request) -> RateLimiter:
    state = request.app.state
    limiter: RateLimiter | None = getattr(state, "collect_limiter", None)
    if limiter is None:
        rate = state.settings.collect_key_per_second
        limiter = state.collect_limiter = RateLimiter(capacity=rate, rate=rate)
    return limiter


def collector_key(request: Request, body_key: str | None = None) -> ApiKey:
    """The key a collector request carries, refused with 429 when it sends faster than allowed."""
    key = authenticate(request, body_key)
    limiter = _collect_limiter(request)
    wait = limiter.take(key.key_id)
    if wait:
        seconds = retry_after(wait)
        error = ApiError(
            429,
            "rate_limited",
            f"this key sent more than {limiter.rate:,.0f} requests per second: retry in {seconds} s",
            retry_after=seconds,
        )
        error.headers["Retry-After"] = str(seconds)
        raise error
    return key


def visitor_of(request: Request, token: str) -> str:
    """The anonymous id a visitor token (from ``POST /v1/visitors``) was issued for; 403 naming
    ``token`` for any token not signed here for that purpose."""
    from percorso.automation import links

    visitor = links.read(request.app.state.engine.secret, links.VISITOR, token)
    if visitor is None:
        raise ApiError(403, "forbidden", "the token is not one POST /v1/visitors issued", "token")
    return visitor
