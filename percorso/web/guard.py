"""Input no store can hold is refused at the door, with the same answer on both stores.

PostgreSQL cannot keep a NUL character in text, and used to answer a NUL in a query value or a
document with a store error (503, "retry"), which reported a client's mistake as an outage;
DuckDB kept it. Every route but the collector's refuses NUL in the path, the query and the body
with a 400 naming where it is (app.py adds this dependency to each router). The collector checks
its bodies itself, message by message (see percorso/events.py), and reads no query.
"""

from __future__ import annotations

from fastapi import Request

from percorso.web.errors import ApiError

_NUL = "\x00"


def _refuse(field: str, where: str) -> ApiError:
    return ApiError(
        400,
        "invalid_request",
        f"{where} contains a NUL character (%00 or \\u0000), which percorso cannot store",
        field,
    )


async def refuse_nul(request: Request) -> None:
    """An app-wide dependency (async: it runs on the event loop, costing no thread hop)."""
    if _NUL in request.scope["path"]:
        raise _refuse("path", "the path")
    query: bytes = request.scope.get("query_string", b"")
    if b"%00" in query or b"\x00" in query:
        for key, value in request.query_params.multi_items():
            if _NUL in key or _NUL in value:
                name = key.replace(_NUL, "\\u0000")
                raise _refuse(name, f"the query parameter {name}")
    if request.method in ("POST", "PUT", "PATCH"):
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "application/x-www-form-urlencoded":
            form = getattr(request, "_form", None)  # FastAPI parsed it already for Form parameters
            if form is not None:
                nul = any(_NUL in k or (isinstance(v, str) and _NUL in v) for k, v in form.multi_items())
            else:
                body = await _small_body(request)
                nul = body is not None and b"%00" in body
        elif kind == "application/json" or kind.endswith(("+json", "yaml")) or kind.startswith("text/"):
            body = await _small_body(request)
            nul = body is not None and (b"\\u0000" in body or b"\x00" in body)
        else:  # files (multipart, binary) may hold NUL bytes legitimately
            return
        if nul:
            raise _refuse("body", "the body")


#: Bodies up to this size are read here to be checked; larger ones are left to their route,
#: which bounds what it reads (the sign-in form stops at a few KB, documents at their limit).
CHECKED_BODY_BYTES = 1024 * 1024


async def _small_body(request: Request) -> bytes | None:
    """The body, once read (Starlette keeps it for the route, and streams it again to a route
    that reads the stream); None when it is larger than :data:`CHECKED_BODY_BYTES`."""
    cached: bytes | None = getattr(request, "_body", None)
    if cached is not None:
        return cached
    declared = request.headers.get("content-length", "")
    if not declared.isdigit() or int(declared) > CHECKED_BODY_BYTES:
        return None
    return await request.body()
