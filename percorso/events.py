"""The Segment-spec event model: parse, validate and normalise incoming messages (pure, no I/O).

A message that arrives over HTTP, from a file import or from the demo passes through
:func:`parse_message`, which either returns an :class:`Event` (one row of the events table)
or raises :class:`MessageError` naming the field and the problem.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgspec

from percorso.channels import SEGMENT_TRANSPORT_VALUES, ChannelClassifier, valid_channel_name
from percorso.values import clean_json, may_be_outside, read_json

CALL_TYPES = ("track", "identify", "page", "screen", "group", "alias")

#: Identifier values that broken integrations send instead of a real id. They would glue
#: thousands of strangers into one contact, so they are never used as identifiers.
JUNK_IDS = frozenset(
    {
        "",
        "0",
        "-1",
        "null",
        "nil",
        "none",
        "undefined",
        "anonymous",
        "anon",
        "unknown",
        "guest",
        "n/a",
        "na",
        "nan",
        "false",
        "true",
        "[object object]",
        "user",
        "test",
        "00000000-0000-0000-0000-000000000000",
    }
)

MAX_ID_LENGTH = 255
MAX_NAME_LENGTH = 255
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")


class MessageError(ValueError):
    """A message that cannot be stored; ``field`` is the JSON path of the offending value."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}" if field else reason)
        self.field = field
        self.reason = reason


class RawMessage(msgspec.Struct, gc=False):
    """The top level of a Segment message as it arrives. Nested objects stay raw JSON."""

    type: str | None = None
    messageId: str | int | None = None
    anonymousId: str | int | None = None
    userId: str | int | None = None
    timestamp: str | None = None
    originalTimestamp: str | None = None
    sentAt: str | None = None
    event: str | None = None
    name: str | None = None
    category: msgspec.Raw = msgspec.Raw()
    groupId: str | int | None = None
    previousId: str | int | None = None
    channel: str | None = None
    properties: msgspec.Raw = msgspec.Raw()
    traits: msgspec.Raw = msgspec.Raw()
    context: msgspec.Raw = msgspec.Raw()
    integrations: msgspec.Raw = msgspec.Raw()


class BatchEnvelope(msgspec.Struct, gc=False):
    batch: list[msgspec.Raw]
    sentAt: str | None = None
    writeKey: str | None = None


class _Page(msgspec.Struct, gc=False):
    url: Any = None
    path: Any = None
    referrer: Any = None
    title: Any = None
    search: Any = None


class _Campaign(msgspec.Struct, gc=False):
    source: Any = None
    medium: Any = None
    name: Any = None
    term: Any = None
    content: Any = None


class _Named(msgspec.Struct, gc=False):
    name: Any = None


class _Traits(msgspec.Struct, gc=False):
    email: Any = None


class ContextView(msgspec.Struct, gc=False):
    """The parts of ``context`` percorso reads; decoded without building the whole object."""

    page: _Page | None = None
    campaign: _Campaign | None = None
    library: _Named | None = None
    traits: _Traits | None = None
    ip: Any = None
    userAgent: Any = None
    locale: Any = None
    channel: Any = None


_decode_context = msgspec.json.Decoder(ContextView).decode
_EMPTY_PAGE = _Page()


def _view(obj: Any, cls: type[Any]) -> Any:
    if not isinstance(obj, dict):
        return None
    return cls(**{k: obj.get(k) for k in cls.__struct_fields__})


def context_view(data: str) -> ContextView:
    """Reads ``context``; odd shapes (a page that is a string, say) read as absent, never as errors."""
    try:
        return _decode_context(data)
    except msgspec.ValidationError:
        ctx = _decode_any(data)
        return ContextView(
            page=_view(ctx.get("page"), _Page),
            campaign=_view(ctx.get("campaign"), _Campaign),
            library=_view(ctx.get("library"), _Named),
            traits=_view(ctx.get("traits"), _Traits),
            ip=ctx.get("ip"),
            userAgent=ctx.get("userAgent"),
            locale=ctx.get("locale"),
            channel=ctx.get("channel"),
        )


def _s(value: Any, limit: int = 2048) -> str | None:
    if isinstance(value, str):
        return value[:limit] if value else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


class Event(msgspec.Struct, gc=False):
    """One stored touchpoint: a row of the ``events`` table (see store/sql)."""

    message_id: str
    type: str
    event: str | None
    name: str | None
    anonymous_id: str | None
    user_id: str | None
    email: str | None
    group_id: str | None
    previous_id: str | None
    timestamp: datetime
    original_timestamp: datetime | None
    sent_at: datetime | None
    received_at: datetime
    channel: str
    source_id: str | None
    page_url: str | None
    page_path: str | None
    page_referrer: str | None
    page_title: str | None
    utm_source: str | None
    utm_medium: str | None
    utm_campaign: str | None
    utm_term: str | None
    utm_content: str | None
    ip: str | None
    user_agent: str | None
    locale: str | None
    library: str | None
    properties: str
    traits: str
    context: str
    integrations: str
    #: Set by identity resolution: the identifier this event resolves through.
    identity_id: int | None = None
    #: Consent stated on an identify ("granted"/"denied"); applied to the contact.
    consent: str | None = None
    #: Decoded traits of an identify call, for the contact profile (not stored twice).
    trait_values: dict[str, Any] | None = None
    warnings: list[tuple[str, str]] | None = None


#: Columns written to the events table, in order.
EVENT_COLUMNS = (
    "message_id",
    "type",
    "event",
    "name",
    "anonymous_id",
    "user_id",
    "email",
    "group_id",
    "previous_id",
    "timestamp",
    "original_timestamp",
    "sent_at",
    "received_at",
    "channel",
    "source_id",
    "page_url",
    "page_path",
    "page_referrer",
    "page_title",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_term",
    "utm_content",
    "ip",
    "user_agent",
    "locale",
    "library",
    "properties",
    "traits",
    "context",
    "integrations",
    "identity_id",
)


@dataclass(frozen=True)
class Limits:
    """Validation limits (from Settings)."""

    max_message_bytes: int = 32 * 1024
    max_json_depth: int = 16
    max_future_seconds: int = 24 * 3600
    min_year: int = 2000

    @classmethod
    def from_settings(cls, settings: Any) -> Limits:
        return cls(
            settings.max_message_bytes,
            settings.max_json_depth,
            settings.max_future_seconds,
            settings.min_year,
        )


_decode_message = msgspec.json.Decoder(RawMessage).decode
_decode_any = msgspec.json.Decoder().decode
_decode_envelope = msgspec.json.Decoder(BatchEnvelope).decode
_EMPTY = b"{}"


def _type_error(exc: msgspec.ValidationError) -> MessageError:
    text = str(exc)
    field = ""
    if " - at `$." in text:
        text, _, path = text.partition(" - at `$.")
        field = path.rstrip("`")
    elif " - at `$`" in text:
        text = text.replace(" - at `$`", "")
    text = text.replace("`", "'")
    return MessageError(field or "message", f"{text[0].lower()}{text[1:]}" if text else "invalid value")


def _identifier(value: str | int | None, field: str, warnings: list[tuple[str, str]]) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):  # bool is an int subclass; true/false are never ids
        raise MessageError(field, "must be a string or a number, not a boolean")
    text = str(value)
    if len(text) > MAX_ID_LENGTH:
        raise MessageError(field, f"is {len(text)} characters long; the limit is {MAX_ID_LENGTH}")
    if "\x00" in text:
        raise MessageError(field, "contains a NUL character")
    if text.strip().lower() in JUNK_IDS:
        warnings.append((field, f"{text!r} is a placeholder, not an identifier; it was ignored"))
        return None
    return text


def _text(value: str | None, field: str, limit: int = MAX_NAME_LENGTH) -> str | None:
    if value is None:
        return None
    if len(value) > limit:
        raise MessageError(field, f"is {len(value)} characters long; the limit is {limit}")
    if "\x00" in value:
        raise MessageError(field, "contains a NUL character")
    return value


def parse_time(value: str, field: str) -> datetime:
    """An ISO 8601 date-time; naive values are UTC."""
    if "\x00" in value:
        raise MessageError(field, "contains a NUL character")
    try:
        parsed = datetime.fromisoformat(value)
    except (ValueError, TypeError):
        raise MessageError(field, f"{value[:64]!r} is not an ISO 8601 date-time") from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+05:00 is before year 1 in UTC
        raise MessageError(field, f"{value[:64]!r} is outside the years 1 to 9999 in UTC") from None


#: What a body or message nested deeper than the JSON decoder goes (about 1,000 levels) hears.
TOO_DEEP = "is nested too deeply to read; objects may nest at most {} levels"


# JSON escapes, with surrogate pairs matched as one; used only to repair a body that failed.
_ESCAPE = re.compile(
    rb"\\(?:u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}|u[dD][89a-fA-F][0-9a-fA-F]{2}|.)"
)
REPLACED_SURROGATE = b"\\ufffd"
SURROGATE_WARNING = ("message", "a lone UTF-16 surrogate (half an emoji) was replaced by U+FFFD")


def _replace_surrogate(match: re.Match[bytes]) -> bytes:
    escape = match.group()
    return REPLACED_SURROGATE if len(escape) == 6 and escape[2:3] in b"dD" else escape


def repair_surrogates(data: bytes) -> bytes | None:
    """``data`` with every lone UTF-16 surrogate escape (``"\\ud83d"``, half an emoji, as
    JavaScript leaves a string cut in the middle of one) replaced by U+FFFD; None if it has none.

    JSON allows such escapes but they are not Unicode text: no store can keep them, and msgspec
    refuses them. Replacing them keeps the event, as browsers do when they render such a string.
    """
    if b"\\u" not in data:
        return None
    repaired = _ESCAPE.sub(_replace_surrogate, data)
    return repaired if repaired != data else None


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > deepest:
            deepest = depth
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values() if isinstance(v, (dict, list)))
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item if isinstance(v, (dict, list)))
    return deepest


def _object(
    raw: msgspec.Raw,
    field: str,
    limits: Limits,
    need: bool,
    warnings: list[tuple[str, str]],
    suspect: bool = True,
) -> tuple[str, dict[str, Any] | None]:
    """Validates a nested JSON object; returns its JSON text and, if ``need``, its decoded value.
    Numbers outside the value domain (see percorso/values.py) become strings, with a warning."""
    data = bytes(raw) if len(raw) else _EMPTY
    if data == b"null":
        return "{}", {} if need else None
    if data[:1] != b"{":
        raise MessageError(field, "must be a JSON object")
    if b"\\u0000" in data:
        raise MessageError(field, "contains a NUL character (\\u0000), which cannot be stored")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MessageError(field, f"is not valid UTF-8 (byte {exc.start})") from None
    decoded: dict[str, Any] | None = None
    try:
        if suspect:
            cleaned = clean_json(text, field)
            if cleaned is not None:
                text, decoded, found = cleaned
                warnings.extend(found)
                data = text.encode("utf-8")
        # Counting brackets is cheap; only objects that could be too deep are walked.
        if data.count(b"{") + data.count(b"[") > limits.max_json_depth:
            if decoded is None:
                decoded = _decode_any(data)
            depth = _depth(decoded)
            if depth > limits.max_json_depth:
                raise MessageError(
                    field, f"is nested {depth} levels deep; the limit is {limits.max_json_depth}"
                )
        if need and decoded is None:
            decoded = _decode_any(data)
    except RecursionError:
        raise MessageError(field, TOO_DEEP.format(limits.max_json_depth)) from None
    except MessageError:
        raise
    except (msgspec.DecodeError, ValueError) as exc:  # what the domain check could not foresee
        raise MessageError(field, f"cannot be read: {exc}") from None
    return text, decoded


def _category(raw: msgspec.Raw, warnings: list[tuple[str, str]]) -> str | None:
    """A page or screen call's category; other calls' and non-string values are not read."""
    data = bytes(raw)
    if not data or data == b"null":
        return None
    if data[:1] != b'"':
        warnings.append(("category", "is not a string; it was not kept"))
        return None
    try:
        return _text(_decode_any(data), "category")
    except msgspec.DecodeError:  # skipped as raw JSON, so its bytes were not read as UTF-8 yet
        raise MessageError("category", "is not valid UTF-8") from None


def normalise_email(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    email = value.strip().lower()
    if len(email) > 254 or not _EMAIL.match(email):
        return None
    return email


_CONSENT = {
    True: "granted",
    False: "denied",
    "granted": "granted",
    "denied": "denied",
    "yes": "granted",
    "no": "denied",
    "true": "granted",
    "false": "denied",
}


def _consent(traits: dict[str, Any] | None) -> str | None:
    if not traits:
        return None
    for key in ("consent", "marketing_consent"):
        if key in traits:
            value = traits[key]
            value = value.strip().lower() if isinstance(value, str) else value
            try:
                return _CONSENT.get(value)
            except TypeError:  # unhashable (a dict or list): not a consent statement we know
                return None
    return None


@lru_cache(maxsize=8192)
def _host(url: str | None) -> str:
    if not url:
        return ""
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""


def _utm_from_url(url: str | None, search: str | None) -> dict[str, str]:
    query = search.lstrip("?") if search else (urlsplit(url).query if url and "utm_" in url else "")
    if "utm_" not in query:
        return {}
    try:
        parsed = parse_qs(query)
    except ValueError:
        return {}
    return {k[4:]: v[0][:512] for k, v in parsed.items() if k.startswith("utm_") and v}


def _read_message(data: bytes, limits: Limits, repaired: bool = False) -> tuple[RawMessage, bool]:
    try:
        return _decode_message(data), repaired
    except msgspec.ValidationError as exc:
        raise _type_error(exc) from None
    except RecursionError:
        raise MessageError("message", TOO_DEEP.format(limits.max_json_depth)) from None
    except msgspec.DecodeError as exc:
        fixed = None if repaired else repair_surrogates(data)
        if fixed is None:
            raise MessageError("message", f"invalid JSON: {exc}") from None
        return _read_message(fixed, limits, repaired=True)


def parse_message(
    payload: bytes | msgspec.Raw,
    *,
    received_at: datetime,
    classifier: ChannelClassifier,
    limits: Limits = Limits(),
    call_type: str | None = None,
    batch_sent_at: str | None = None,
    source_id: str | None = None,
    historical: bool = False,
) -> Event:
    """Validates one Segment message and returns the normalised event.

    ``call_type`` is the type implied by the endpoint (``/v1/track`` → ``track``). ``historical``
    messages (imports) keep their timestamps as given: no clock-skew correction.
    Example: ``parse_message(b'{"type":"track","event":"Signed Up","userId":"u1"}', ...)``.
    """
    data = bytes(payload)
    if len(data) > limits.max_message_bytes:
        raise MessageError("message", f"is {len(data):,} bytes; the limit is {limits.max_message_bytes:,}")
    if data[:1] != b"{":
        raise MessageError("message", "must be a JSON object")
    warnings: list[tuple[str, str]] = []
    raw, repaired = _read_message(data, limits)
    if repaired:
        warnings.append(SURROGATE_WARNING)

    kind = raw.type if raw.type is not None else call_type
    if kind is None:
        raise MessageError("type", f"is required (one of {', '.join(CALL_TYPES)})")
    kind = kind.lower()
    if kind not in CALL_TYPES:
        raise MessageError("type", f"{raw.type!r} is not one of {', '.join(CALL_TYPES)}")
    if call_type is not None and kind != call_type:
        raise MessageError("type", f"{raw.type!r} was sent to the /v1/{call_type} endpoint")

    anonymous_id = _identifier(raw.anonymousId, "anonymousId", warnings)
    user_id = _identifier(raw.userId, "userId", warnings)
    group_id = _identifier(raw.groupId, "groupId", warnings)
    previous_id = _identifier(raw.previousId, "previousId", warnings)
    event_name = _text(raw.event, "event")
    name = _text(raw.name, "name")

    if kind == "track" and not (event_name and event_name.strip()):
        raise MessageError("event", "is required for a track call")
    if kind == "group" and group_id is None:
        raise MessageError("groupId", "is required for a group call")
    if kind == "alias" and (previous_id is None or user_id is None):
        raise MessageError("previousId" if previous_id is None else "userId", "is required for an alias call")

    category = _category(raw.category, warnings) if kind in ("page", "screen") else None
    suspect = may_be_outside(data)  # once for the whole message: most messages have no such number
    properties, props = _object(
        raw.properties, "properties", limits, kind == "page" or bool(category), warnings, suspect
    )
    if category and props is not None and "category" not in props:
        # analytics.js keeps page(category, name) in the properties too; so does percorso.
        props = {**props, "category": category}
        properties = msgspec.json.encode(props).decode()
    traits, trait_values = _object(
        raw.traits, "traits", limits, kind in ("identify", "group"), warnings, suspect
    )
    context, context_values = _object(
        raw.context, "context", limits, kind == "identify" and not trait_values, warnings, suspect
    )
    integrations, _ = _object(raw.integrations, "integrations", limits, False, warnings, suspect)
    ctx = context_view(context)
    if context_values and isinstance(context_values.get("traits"), dict) and not trait_values:
        # RudderStack's and some Segment libraries send identify traits only in context.traits.
        trait_values = context_values["traits"]
        traits = msgspec.json.encode(trait_values).decode()

    email = normalise_email(trait_values.get("email")) if kind == "identify" and trait_values else None
    if email is None and ctx.traits is not None:
        email = normalise_email(ctx.traits.email)
    if email is None and kind == "identify" and trait_values and "email" in trait_values:
        warnings.append(
            ("traits.email", "is not a valid email address; it was not used to recognise the contact")
        )
    if anonymous_id is None and user_id is None and email is None:
        raise MessageError("anonymousId", "an anonymousId or a userId is required")

    # Timestamps: Segment corrects device clock skew with sentAt (per message, else per batch).
    original = None
    given, given_original = raw.timestamp, raw.originalTimestamp
    if given == "" or given_original == "":  # some libraries send "" for "not known": read as absent
        for field, value in (("timestamp", given), ("originalTimestamp", given_original)):
            if value == "":
                warnings.append((field, "is empty; the message was read as if it had none"))
        given, given_original = given or None, given_original or None
    stamp = given or given_original
    if stamp is not None:
        original = parse_time(stamp, "timestamp" if given else "originalTimestamp")
    sent_raw = raw.sentAt or batch_sent_at
    sent_at = parse_time(sent_raw, "sentAt") if sent_raw else None
    if original is None:
        timestamp = received_at
    elif sent_at is not None and not historical:
        try:
            timestamp = received_at - (sent_at - original)
        except OverflowError:
            raise MessageError(
                "sentAt", f"{sent_raw!r} is too far from the timestamp to correct the clock by"
            ) from None
    else:
        timestamp = original
    if timestamp.year < limits.min_year:
        field = "timestamp" if stamp is not None else "sentAt"
        raise MessageError(
            field, f"{timestamp.isoformat()} is before {limits.min_year}; is the device clock unset?"
        )
    if timestamp > received_at + timedelta(seconds=limits.max_future_seconds):
        raise MessageError("timestamp", f"{timestamp.isoformat()} is in the future")

    page = ctx.page or _EMPTY_PAGE
    page_url = _s(page.url) or (_s(props.get("url")) if props else None)
    page_path = _s(page.path) or (_s(props.get("path")) if props else None)
    if page_path is None and page_url:
        try:
            page_path = urlsplit(page_url).path or "/"
        except ValueError:
            page_path = None
    referrer = (
        _s(page.referrer) if page.referrer is not None else (_s(props.get("referrer")) if props else None)
    )
    title = _s(page.title, 512) or (_s(props.get("title"), 512) if props else None)
    campaign = ctx.campaign
    utm: dict[str, str | None] = {}
    if campaign is not None:
        utm = {k: _s(getattr(campaign, k), 512) for k in ("source", "medium", "name", "term", "content")}
    if not any(utm.values()):
        utm = {}
        utm.update(_utm_from_url(page_url, _s(page.search)))
        if "campaign" in utm:
            utm["name"] = utm.pop("campaign")
    library = _s(ctx.library.name, 128) if ctx.library is not None else None

    channel = _explicit_channel(ctx.channel, raw.channel)
    if channel is None:
        page_host = _host(page_url)
        ref_host = _host(referrer)
        channel = classifier.classify_facts(
            (utm.get("medium") or "").lower(),
            (utm.get("source") or "").lower(),
            ref_host,
            "yes" if ref_host and ref_host == page_host else ("no" if ref_host else ""),
            (library or "").lower(),
            kind,
            (event_name or "").lower(),
        )

    message_id = _text(str(raw.messageId), "messageId", MAX_ID_LENGTH) if raw.messageId is not None else None
    if not message_id or not message_id.strip():
        # Without a messageId retries cannot be recognised; Segment assigns one too.
        message_id = f"srv-{uuid.uuid4()}"

    return Event(
        message_id=message_id,
        type=kind,
        event=event_name,
        name=name,
        anonymous_id=anonymous_id,
        user_id=user_id,
        email=email,
        group_id=group_id,
        previous_id=previous_id,
        timestamp=timestamp,
        original_timestamp=original,
        sent_at=sent_at,
        received_at=received_at,
        channel=channel,
        source_id=source_id,
        page_url=page_url,
        page_path=page_path,
        page_referrer=referrer,
        page_title=title,
        utm_source=utm.get("source"),
        utm_medium=utm.get("medium"),
        utm_campaign=utm.get("name"),
        utm_term=utm.get("term"),
        utm_content=utm.get("content"),
        ip=_s(ctx.ip, 64),
        user_agent=_s(ctx.userAgent, 1024),
        locale=_s(ctx.locale, 32),
        library=library,
        properties=properties,
        traits=traits,
        context=context,
        integrations=integrations,
        consent=_consent(trait_values) if kind == "identify" else None,
        trait_values=trait_values if kind == "identify" else None,
        warnings=warnings or None,
    )


def _explicit_channel(context_value: Any, top_level: str | None) -> str | None:
    for value in (context_value, top_level):
        if not isinstance(value, str) or not value.strip():
            continue
        slug = value.strip().lower().replace(" ", "-").replace("_", "-")
        if slug in SEGMENT_TRANSPORT_VALUES:
            continue
        if not valid_channel_name(slug):
            field = "context.channel" if value is context_value else "channel"
            raise MessageError(field, f"{value[:40]!r} is not a channel name (letters, digits and '-')")
        return slug
    return None


def decode_batch(body: bytes, limits: Limits = Limits()) -> tuple[BatchEnvelope, bool]:
    """The envelope of a /v1/batch or /v1/import body; messages stay raw for per-message errors.
    The flag says lone surrogates were replaced (see :func:`repair_surrogates`)."""
    try:
        envelope = _decode_envelope(body)
    except msgspec.ValidationError as exc:
        raise _type_error(exc) from None
    except RecursionError:
        raise MessageError("body", TOO_DEEP.format(limits.max_json_depth)) from None
    except msgspec.DecodeError as exc:
        repaired = repair_surrogates(body)
        if repaired is None:
            raise MessageError("body", f"invalid JSON: {exc}") from None
        try:
            return decode_batch(repaired, limits)[0], True
        except MessageError:  # not only the surrogates were wrong: name the first problem
            raise MessageError("body", f"invalid JSON: {exc}") from None
    if not envelope.batch:
        raise MessageError("batch", "must contain at least one message")
    return envelope, False


def check_json_body(body: bytes) -> None:
    """Refuses bodies that are not UTF-8 JSON objects, naming the byte where it went wrong."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MessageError("body", f"is not valid UTF-8 (byte {exc.start})") from None
    stripped = body.lstrip()
    if not stripped:
        raise MessageError("body", "is empty; send a JSON object")
    if stripped[:1] != b"{":
        raise MessageError("body", "must be a JSON object")


def event_to_json(row: dict[str, Any]) -> dict[str, Any]:
    """An events-table row as the Segment-style JSON the API returns."""
    out: dict[str, Any] = {
        "messageId": row["message_id"],
        "type": row["type"],
        "channel": row["channel"],
        "timestamp": iso_utc(row["timestamp"]),
        "receivedAt": iso_utc(row["received_at"]),
    }
    for key, column in (
        ("event", "event"),
        ("name", "name"),
        ("anonymousId", "anonymous_id"),
        ("userId", "user_id"),
        ("groupId", "group_id"),
        ("previousId", "previous_id"),
    ):
        if row.get(column) is not None:
            out[key] = row[column]
    for key in ("properties", "traits", "context"):
        value = row.get(key)
        if isinstance(value, str):
            value = read_json(value)
        if value:
            out[key] = value
    return out


def iso_utc(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def new_received_at() -> datetime:
    return datetime.now(UTC)
