"""The collector's wire format as JSON Schema and response models, for the OpenAPI document.

The endpoints read the raw body themselves (msgspec, for speed), so FastAPI never sees these
schemas; they describe what :func:`percorso.events.parse_message` accepts. Rules JSON Schema
cannot state are in the descriptions: placeholder ids (``"0"``, ``"null"``, ``"test"``...) are
ignored, timestamps must fall between the configured first year and 24 hours ahead, objects
nest at most 16 levels, a message is at most 32 KiB, and no string may hold a NUL character.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from percorso.events import CALL_TYPES, MAX_ID_LENGTH, MAX_NAME_LENGTH

#: How many rejections and warnings a batch answer lists; the rest are counted.
LISTED = 100

_NO_NUL = "^[^\\x00]*$"

_IDENTIFIER = {
    "type": ["string", "integer", "null"],
    "maxLength": MAX_ID_LENGTH,
    "pattern": _NO_NUL,
    "description": f"a string or an integer, at most {MAX_ID_LENGTH} characters; "
    "placeholders such as 'null', '0' or 'anonymous' are ignored with a warning",
}
_NAME = {"type": ["string", "null"], "maxLength": MAX_NAME_LENGTH, "pattern": _NO_NUL}
_TIME = {
    "type": ["string", "null"],
    "format": "date-time",
    "description": "ISO 8601; without an offset it is UTC; from the configured first year (2000) "
    "to 24 hours ahead",
}
_OBJECT = {"type": ["object", "null"], "description": "a JSON object (at most 16 levels deep, no NUL)"}
_EMAIL = {"type": "string", "format": "email", "maxLength": 254}

_REQUIRED_BY_CALL: dict[str, dict[str, Any]] = {
    "track": {
        "required": ["event"],
        "properties": {"event": {"type": "string", "minLength": 1, "pattern": "\\S"}},
    },
    "group": {"required": ["groupId"], "properties": {"groupId": {"type": ["string", "integer"]}}},
    "alias": {
        "required": ["previousId", "userId"],
        "properties": {
            "previousId": {"type": ["string", "integer"]},
            "userId": {"type": ["string", "integer"]},
        },
    },
}


def _case_insensitive(word: str) -> str:
    return "^" + "".join(f"[{c.lower()}{c.upper()}]" for c in word) + "$"


def _someone(call: str | None) -> list[dict[str, Any]]:
    """Who the message is about: an anonymousId, a userId, or an email in the traits."""
    someone: list[dict[str, Any]] = [
        {"required": [name], "properties": {name: {"type": ["string", "integer"]}}}
        for name in ("userId", "anonymousId")
    ]
    someone.append(
        {
            "required": ["context"],
            "properties": {
                "context": {
                    "type": "object",
                    "required": ["traits"],
                    "properties": {
                        "traits": {"type": "object", "required": ["email"], "properties": {"email": _EMAIL}}
                    },
                }
            },
        }
    )
    if call in (None, "identify"):
        traits: dict[str, Any] = {
            "traits": {"type": "object", "required": ["email"], "properties": {"email": _EMAIL}}
        }
        if call is None:  # in a batch, only an identify's own traits name the contact
            traits["type"] = {"pattern": _case_insensitive("identify")}
        someone.append({"required": ["traits"], "properties": traits})
    return someone


def message_schema(call: str | None) -> dict[str, Any]:
    """One Segment message; ``call`` is the endpoint's type (None: a batch member, any type)."""
    kind: dict[str, Any]
    if call is None:
        kind = {
            "type": "string",
            "pattern": "^(" + "|".join(_case_insensitive(c)[1:-1] for c in CALL_TYPES) + ")$",
            "description": "the call type (case does not matter)",
        }
    else:
        kind = {
            "type": ["string", "null"],
            "pattern": _case_insensitive(call),
            "description": f"{call!r} or absent (case does not matter)",
        }
    schema: dict[str, Any] = {
        "type": "object",
        "description": "A Segment Spec message; unknown fields are kept in the raw message only.",
        "properties": {
            "type": kind,
            "messageId": {**_IDENTIFIER, "description": "the retry key: a message seen again is a duplicate"},
            "anonymousId": _IDENTIFIER,
            "userId": _IDENTIFIER,
            "groupId": _IDENTIFIER,
            "previousId": _IDENTIFIER,
            "event": {**_NAME, "description": "the track event's name"},
            "name": {**_NAME, "description": "the page or screen name"},
            "timestamp": _TIME,
            "originalTimestamp": _TIME,
            "sentAt": {**_TIME, "description": "when the device sent it; corrects device clock skew"},
            "channel": {
                "type": ["string", "null"],
                "description": "an explicit channel slug (letters, digits, '-', '_'); Segment's "
                "'client', 'server', 'browser' and 'mobile' mean none",
            },
            "properties": _OBJECT,
            "traits": _OBJECT,
            "context": {
                **_OBJECT,
                "description": "page, campaign, library, traits.email, ip, userAgent, locale and channel "
                "are read; other shapes are kept and ignored",
            },
            "integrations": _OBJECT,
            "writeKey": {
                "type": ["string", "null"],
                "description": "the write key, if not sent in the header",
            },
        },
        "anyOf": _someone(call),
    }
    if call is None:
        schema["required"] = ["type"]
    else:
        extra = _REQUIRED_BY_CALL.get(call)
        if extra:
            schema["allOf"] = [extra]
    return schema


def message_body(call: str) -> dict[str, Any]:
    """``openapi_extra`` of ``/v1/<call>``."""
    return {
        "requestBody": {
            "required": True,
            "description": f"One `{call}` message as JSON (gzip or deflate Content-Encoding allowed)",
            "content": {"application/json": {"schema": message_schema(call)}},
        }
    }


def batch_body(historical: bool) -> dict[str, Any]:
    """``openapi_extra`` of ``/v1/batch`` and ``/v1/import``."""
    member = message_schema(None)
    envelope = {
        "type": "object",
        "required": ["batch"],
        "properties": {
            "batch": {
                "type": "array",
                "minItems": 1,
                "items": member,
                "description": "the messages; each invalid one is listed in `rejected` by index "
                "and the others are stored",
            },
            "sentAt": {**_TIME, "description": "when the batch was sent; applies to members without one"},
            "writeKey": {"type": ["string", "null"]},
        },
    }
    content: dict[str, Any] = {"application/json": {"schema": envelope}}
    if historical:
        content["application/x-ndjson"] = {
            "schema": {
                "type": "array",
                "minItems": 1,
                "items": member,
                "description": "one message per line",
            }
        }
    return {
        "requestBody": {
            "required": True,
            "description": "A batch envelope"
            + (" or NDJSON (one message per line; timestamps kept as given)" if historical else ""),
            "content": content,
        }
    }


class FieldWarning(BaseModel):
    field: str
    reason: str


class Ack(BaseModel):
    """A single call's answer: stored, or recognised as a retry of one already stored."""

    success: bool = True
    stored: bool = Field(description="false when the messageId was seen before (a retry)")
    duplicate: bool | None = Field(None, description="present (true) when the message was a duplicate")
    warnings: list[FieldWarning] | None = Field(None, description="values that were ignored, and why")


class Rejection(BaseModel):
    index: int = Field(description="the message's position in the batch or line in the file (from 0)")
    field: str
    reason: str


class MemberWarning(Rejection):
    pass


class BatchResult(BaseModel):
    """A batch's answer: how many were stored, how many were retries, and each rejection."""

    success: bool
    received: int
    stored: int
    duplicates: int
    rejected: list[Rejection] = Field(description=f"The first {LISTED:,} rejections, by index")
    rejected_more: int | None = Field(None, description="How many rejections were not listed")
    warnings: list[MemberWarning] | None = Field(None, description=f"The first {LISTED:,} warnings")
    warnings_more: int | None = Field(None, description="How many warnings were not listed")
