"""Segment-compatible ingestion endpoints: /v1/track|identify|page|screen|group|alias|batch|import."""

from __future__ import annotations

import zlib
from pathlib import Path as Path_
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, Response

from percorso.collect.schema import LISTED, Ack, BatchResult, batch_body, message_body
from percorso.collect.writer import GroupCommitWriter, WriteOutcome
from percorso.events import (
    CALL_TYPES,
    REPLACED_SURROGATE,
    SURROGATE_WARNING,
    TOO_DEEP,
    Event,
    Limits,
    MessageError,
    check_json_body,
    decode_batch,
    new_received_at,
    parse_message,
    repair_surrogates,
)
from percorso.store import StoreUnavailable
from percorso.web.auth import collector_key
from percorso.web.errors import ApiError
from percorso.web.openapi import COLLECT, COLLECT_SECURITY, NOT_FOUND, responses

router = APIRouter(tags=["collect"])


class _KeyOnly(msgspec.Struct):
    writeKey: str | None = None


_decode_key = msgspec.json.Decoder(_KeyOnly).decode


def _body_key(body: bytes, limits: Limits) -> tuple[bytes, str | None]:
    """The body, with lone surrogates replaced, and the writeKey in it. Reading the key also
    proves the body is well-formed JSON before authentication."""
    try:
        return body, _decode_key(body).writeKey
    except RecursionError:  # msgspec stops at its own depth limit; the stack is never at risk
        raise MessageError("body", TOO_DEEP.format(limits.max_json_depth)) from None
    except msgspec.ValidationError as exc:
        raise ApiError(400, "invalid_json", f"body: {exc}", "body") from None
    except msgspec.DecodeError as exc:
        repaired = repair_surrogates(body)
        if repaired is None:
            raise ApiError(400, "invalid_json", f"body: invalid JSON: {exc}", "body") from None
        try:
            return repaired, _decode_key(repaired).writeKey
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            raise ApiError(400, "invalid_json", f"body: invalid JSON: {exc}", "body") from None


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` (also after gunzip)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(size, limit)
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "").lower()
    if encoding in ("gzip", "deflate"):
        return _inflate(body, encoding, limit)
    if encoding not in ("", "identity"):
        raise ApiError(
            415, "unsupported_encoding", f"Content-Encoding {encoding!r} is not supported; use gzip"
        )
    return body


def _inflate(data: bytes, encoding: str, limit: int) -> bytes:
    """Decompresses every member of a gzip body (or one zlib stream), at most ``limit`` bytes.
    A stream cut short is refused: what it held up to the cut may end mid-message."""
    parts: list[bytes] = []
    size = 0
    while data:
        inflater = zlib.decompressobj(wbits=47)  # gzip or zlib header, detected
        try:
            part = inflater.decompress(data, limit + 1 - size)
        except zlib.error as exc:
            raise ApiError(400, "invalid_body", f"body is not valid {encoding} data: {exc}", "body") from None
        size += len(part)
        if size > limit or inflater.unconsumed_tail:
            raise _too_large(size, limit)
        if not inflater.eof:
            raise ApiError(400, "invalid_body", f"body is not valid {encoding} data: it is cut short", "body")
        parts.append(part)
        data = inflater.unused_data
    return b"".join(parts)


def _too_large(size: int, limit: int) -> ApiError:
    return ApiError(
        413, "body_too_large", f"the body is {size:,} bytes or more; the limit is {limit:,} bytes", "body"
    )


def _bad(exc: MessageError, **extra: Any) -> ApiError:
    return ApiError(400, "invalid_message", str(exc), exc.field, **extra)


async def _write(request: Request, events: list[Event]) -> WriteOutcome:
    writer: GroupCommitWriter = request.app.state.writer
    try:
        return await writer.write(events)
    except StoreUnavailable:
        raise
    except Exception as exc:
        error = ApiError(503, "unavailable", f"could not store the data, retry: {exc}")
        error.headers["Retry-After"] = "1"
        raise error from None


def _single(call: str) -> Any:
    async def endpoint(request: Request) -> JSONResponse:
        state = request.app.state
        body = await read_body(request, state.settings.max_body_bytes)
        try:
            check_json_body(body)
            message, body_key = _body_key(body, state.limits)
        except MessageError as exc:
            raise _bad(exc) from None
        key = collector_key(request, body_key)
        try:
            event = parse_message(
                message,
                received_at=new_received_at(),
                classifier=state.classifier,
                limits=state.limits,
                call_type=call,
                source_id=key.key_id,
            )
        except MessageError as exc:
            raise _bad(exc) from None
        outcome = await _write(request, [event])
        if event.message_id in outcome.refused:
            raise ApiError(400, "invalid_message", outcome.refused[event.message_id], "message")
        result: dict[str, Any] = {"success": True, "stored": event.message_id in outcome.stored}
        if not result["stored"]:
            result["duplicate"] = True
        warnings = [*(event.warnings or ()), *([SURROGATE_WARNING] if message is not body else [])]
        if warnings:
            result["warnings"] = [{"field": f, "reason": r} for f, r in warnings]
        return JSONResponse(result)

    endpoint.__name__ = f"collect_{call}"
    endpoint.__doc__ = f"Receive one Segment `{call}` call."
    return endpoint


#: analytics.js (analytics-next) posts to one-letter paths; they are the long ones by other names.
SHORT_PATHS = {"track": "t", "identify": "i", "page": "p", "screen": "s", "group": "g", "alias": "a"}

for _call in CALL_TYPES:
    _endpoint = _single(_call)
    router.add_api_route(
        f"/v1/{_call}",
        _endpoint,
        methods=["POST"],
        summary=f"Send a {_call} call",
        responses=responses(
            {200: {"model": Ack, "description": "Stored, or a retry of one stored"}}, COLLECT
        ),
        openapi_extra={**message_body(_call), "security": COLLECT_SECURITY},
    )
    router.add_api_route(f"/v1/{SHORT_PATHS[_call]}", _endpoint, methods=["POST"], include_in_schema=False)


async def _ingest_many(request: Request, *, historical: bool) -> JSONResponse:
    state = request.app.state
    limit = state.settings.max_import_body_bytes if historical else state.settings.max_body_bytes
    body = await read_body(request, limit)
    ndjson = historical and "ndjson" in request.headers.get("content-type", "")
    try:
        if ndjson:  # each line stands alone: a bad one (not UTF-8, too deep) is rejected by itself
            messages: list[Any] = [line for line in body.split(b"\n") if line.strip()]
            if not messages:
                raise MessageError("body", "contains no messages")
            batch_sent_at, body_key, repaired = None, None, False
        else:
            check_json_body(body)
            envelope, repaired = decode_batch(body, state.limits)
            messages, batch_sent_at, body_key = envelope.batch, envelope.sentAt, envelope.writeKey
    except MessageError as exc:
        raise _bad(exc) from None
    key = collector_key(request, body_key)

    received_at = new_received_at()
    events: list[Event] = []
    index_of: dict[str, int] = {}
    rejected: list[dict[str, Any]] = []
    warnings: list[dict[str, Any]] = []
    for index, raw in enumerate(messages):
        try:
            event = parse_message(
                raw,
                received_at=received_at,
                classifier=state.classifier,
                limits=state.limits,
                batch_sent_at=batch_sent_at,
                source_id=key.key_id,
                historical=historical,
            )
        except MessageError as exc:
            rejected.append({"index": index, "field": exc.field, "reason": exc.reason})
            continue
        events.append(event)
        index_of.setdefault(event.message_id, index)
        if repaired and REPLACED_SURROGATE in bytes(raw):
            warnings.append({"index": index, "field": SURROGATE_WARNING[0], "reason": SURROGATE_WARNING[1]})
        if event.warnings:
            warnings.extend({"index": index, "field": f, "reason": r} for f, r in event.warnings)

    outcome = await _write(request, events) if events else WriteOutcome()
    for message_id, reason in outcome.refused.items():
        rejected.append({"index": index_of[message_id], "field": "message", "reason": reason})
    rejected.sort(key=lambda r: r["index"])
    accepted = len(events) - len(outcome.refused)
    result: dict[str, Any] = {
        "success": accepted > 0,
        "received": len(messages),
        "stored": len(outcome.stored),
        "duplicates": accepted - len(outcome.stored),
        "rejected": rejected[:LISTED],
    }
    # The answer stays small whatever the batch holds: a client learns the first problems
    # and how many more there were, never a list longer than what it sent.
    if len(rejected) > LISTED:
        result["rejected_more"] = len(rejected) - LISTED
    if warnings:
        result["warnings"] = warnings[:LISTED]
        if len(warnings) > LISTED:
            result["warnings_more"] = len(warnings) - LISTED
    if accepted == 0:
        first = rejected[0]
        result.update(
            code="invalid_batch",
            message=f"no message in the batch could be stored; first problem: message {first['index']}: "
            f"{first['field']}: {first['reason']}",
        )
        return JSONResponse(result, status_code=400)
    return JSONResponse(result)


_BATCH_RESPONSES = responses(
    {200: {"model": BatchResult, "description": "At least one message was stored or was a retry"}},
    COLLECT,
    {400: {**COLLECT[400], "description": "The body is invalid, or no message in it could be stored"}},
)


@router.post("/v1/b", include_in_schema=False)
@router.post(
    "/v1/batch",
    summary="Send a batch of Segment calls",
    responses=_BATCH_RESPONSES,
    openapi_extra={**batch_body(historical=False), "security": COLLECT_SECURITY},
)
async def collect_batch(request: Request) -> JSONResponse:
    """Valid messages are stored even when others are rejected; each rejection names its index."""
    return await _ingest_many(request, historical=False)


@router.post(
    "/v1/import",
    summary="Import historical messages (JSON batch or NDJSON)",
    responses=_BATCH_RESPONSES,
    openapi_extra={**batch_body(historical=True), "security": COLLECT_SECURITY},
)
async def collect_import(request: Request) -> JSONResponse:
    """Like /v1/batch with a larger body limit and timestamps taken as given (no clock-skew correction)."""
    return await _ingest_many(request, historical=True)


@router.get(
    "/v1/projects/{write_key}/settings",
    summary="analytics.js settings for a write key (point its cdnURL at percorso)",
    responses=NOT_FOUND,
)
def analytics_settings(request: Request, write_key: Annotated[str, Path(max_length=200)]) -> JSONResponse:
    """What analytics.js (analytics-next) loads before it sends anything, as Segment's CDN serves
    it: events go to this server (``apiHost``), with no other destinations and no metrics. Load it
    with ``AnalyticsBrowser.load({writeKey, cdnURL: "https://percorso.example"})``."""
    key = request.app.state.keys.lookup(write_key)
    if key is None or key.kind != "write":
        raise ApiError(404, "not_found", "no active write key has this value")
    host = request.headers.get("host") or request.url.netloc
    segment = {
        "apiKey": write_key,
        "apiHost": f"{host}/v1",
        "protocol": request.url.scheme,
        "unbundledIntegrations": [],
        "addBundledMetadata": True,
        "maybeBundledConfigIds": {},
        "versionSettings": {"version": "4.4.7", "componentTypes": ["browser"]},
    }
    settings = {
        "integrations": {"Segment.io": segment},
        "plan": {"track": {"__default": {"enabled": True, "integrations": {}}}},
        "edgeFunction": {},
        "analyticsNextEnabled": True,
        "middlewareSettings": {},
        "enabledMiddleware": {},
        "metrics": {"sampleRate": 0},
        "legacyVideoPluginsEnabled": False,
        "remotePlugins": [],
    }
    return JSONResponse(settings, headers={"Cache-Control": "max-age=60"})


TRACKER = Path_(__file__).parent.parent / "track" / "percorso.js"


@router.get("/percorso.js", include_in_schema=False)
def tracker_script() -> Response:
    """percorso.js, the browser tracker (docs/tracker.md). Any site may load it: what it sends
    is checked against its write key's origins."""
    return Response(
        TRACKER.read_bytes(),
        media_type="text/javascript; charset=utf-8",
        headers={"Cache-Control": "public, max-age=300", "X-Content-Type-Options": "nosniff"},
    )
