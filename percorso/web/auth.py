"""Request authentication with API keys (see collect/keys.py)."""

from __future__ import annotations

from fastapi import Request

from percorso.collect.keys import KeyRing, credential_from_header
from percorso.store import ApiKey
from percorso.web.errors import ApiError


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
    return key


def require_secret(request: Request) -> ApiKey:
    """FastAPI dependency for read and admin endpoints."""
    return authenticate(request, secret=True)


def require_write(request: Request) -> ApiKey:
    """FastAPI dependency for what the browser tracker may call with its write key."""
    return authenticate(request)
