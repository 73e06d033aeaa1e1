"""The OpenAPI document, made to say what the server does: percorso's error body on every
status a client can get, the keys each operation takes, and the document schemas of the
definition endpoints.

Routers take their ``responses=`` from here, so every operation documents the same error body.
:func:`describe` then corrects what FastAPI generates on its own: FastAPI documents a 422
``HTTPValidationError`` wherever it validates parameters or a body, but percorso answers those
with 400 and its own body (see errors.py).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Security
from fastapi.openapi.models import HTTPBase
from fastapi.security.base import SecurityBase
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

Responses = dict[int | str, dict[str, Any]]


def _iso_only(value: Any) -> Any:
    # pydantic reads 1700000000 or "0.5" as Unix time; the document promises ISO 8601 date-times.
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(value, str):
        try:
            float(value)
            number = True
        except ValueError:
            pass
    if number:
        raise ValueError("must be an ISO 8601 date-time such as 2026-01-31T09:00:00Z, not a number")
    return value


def _in_utc(value: datetime) -> datetime:
    # Naive values are UTC; an offset that moves the instant past year 1 or 9999 is refused here
    # rather than overflowing in the arithmetic that follows.
    try:
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    except OverflowError:
        raise ValueError("is outside the years 1 to 9999 once converted to UTC") from None


#: A date-time parameter or field: ISO 8601 text, as the document's ``format: date-time`` says.
DateTime = Annotated[datetime, BeforeValidator(_iso_only), AfterValidator(_in_utc)]


#: A JSON Schema pattern for text without NUL, which PostgreSQL cannot store (web/guard.py).
NO_NUL = r"^[^\x00]*$"


class RequestBody(BaseModel):
    """A JSON request body: a field the endpoint does not take is refused by name, as an
    unknown query parameter is, instead of being silently dropped."""

    model_config = ConfigDict(extra="forbid")


class ErrorBody(BaseModel):
    """What every error answers: ``code`` for programs, ``message`` for people, ``field`` to fix."""

    # Some errors carry more: a batch's per-message ``rejected`` list, a document's ``problems``.
    model_config = ConfigDict(extra="allow", title="Error")

    success: Literal[False] = False
    code: str = Field(description="machine-readable: invalid_request, invalid_message, unauthorized, ...")
    message: str = Field(description="the problem in words, naming the field and the rule")
    field: str | None = Field(None, description="the parameter or JSON path at fault, when there is one")


class DocumentProblem(BaseModel):
    source: str
    line: int | None = None
    field: str
    message: str
    suggestion: str | None = None
    severity: Literal["error", "warning"] = "error"


class DocumentErrorBody(ErrorBody):
    """A journey or automation document that does not load: every problem, with line and field."""

    model_config = ConfigDict(extra="allow", title="DocumentError")

    problems: list[DocumentProblem]


_RETRY_AFTER = {
    "Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}
}


def _error(description: str, model: type[BaseModel] = ErrorBody, retry: bool = False) -> dict[str, Any]:
    response: dict[str, Any] = {"model": model, "description": description}
    if retry:
        response["headers"] = _RETRY_AFTER
    return response


INVALID: Responses = {
    400: _error("The request is invalid: `field` names the parameter or JSON path, `message` the rule")
}
UNAUTHORIZED: Responses = {
    401: _error("No API key was sent, or the key is unknown or revoked (code `unauthorized`)")
}
FORBIDDEN: Responses = {
    403: _error("A write key was sent; this operation needs a secret key (code `forbidden`)")
}
NOT_FOUND: Responses = {404: _error("No such resource (code `not_found`)")}
CONFLICT: Responses = {409: _error("The resource's state does not allow this now (code `conflict`)")}
TOO_LARGE: Responses = {413: _error("The body (after gunzip) is over the limit (code `body_too_large`)")}
UNSUPPORTED_ENCODING: Responses = {
    415: _error("A Content-Encoding other than gzip or deflate (code `unsupported_encoding`)")
}
INVALID_DOCUMENT: Responses = {
    422: _error(
        "The document does not load or refers to unknown events or stages: every problem is listed",
        DocumentErrorBody,
    )
}
THROTTLED: Responses = {429: _error("Too many requests for this key; wait `Retry-After` seconds", retry=True)}
UNAVAILABLE: Responses = {
    503: _error(
        "The store is unavailable or failed; nothing was changed; retry after `Retry-After`", retry=True
    )
}


def responses(*parts: Responses) -> Responses:
    """The union of several response tables, for a router's or an operation's ``responses=``."""
    merged: Responses = {}
    for part in parts:
        merged.update(part)
    return merged


#: What every secret-key operation can answer besides its own results.
SECRET_KEY = responses(UNAUTHORIZED, FORBIDDEN, UNAVAILABLE)
#: What an operation the browser tracker calls with its write key can answer.
WRITE_KEY = responses(UNAUTHORIZED, UNAVAILABLE)
#: The collector's endpoints: they read the raw body themselves (see collect/routes.py).
COLLECT = responses(INVALID, UNAUTHORIZED, TOO_LARGE, UNSUPPORTED_ENCODING, THROTTLED, UNAVAILABLE)


class KeyScheme(SecurityBase):
    """Puts an API key scheme in the document; ``require_secret``/``require_write`` do the checking."""

    def __init__(self, name: str, description: str):
        self.model = HTTPBase(scheme="basic", description=description)
        self.scheme_name = name

    async def __call__(self) -> None:
        return None


_SECRET = KeyScheme(
    "secretKey",
    "A secret API key as the HTTP Basic username with an empty password "
    "(`Authorization: Bearer <key>` works too). Secret keys read and administer everything.",
)
_WRITE = KeyScheme(
    "writeKey",
    "A write API key as the HTTP Basic username with an empty password, as Segment libraries send "
    "it (or `Authorization: Bearer <key>`, or `writeKey` in a collector body). Write keys only send data.",
)
#: Router dependencies that document which key an operation takes.
DOCUMENT_SECRET_KEY = [Security(_SECRET)]
DOCUMENT_WRITE_KEY = [Security(_WRITE), Security(_SECRET)]  # a secret key may send data too
#: The same for the collector's operations, which authenticate inside the handler.
COLLECT_SECURITY: list[dict[str, list[str]]] = [{"writeKey": []}, {"secretKey": []}]


def describe(app: FastAPI) -> None:
    """Make ``app.openapi()`` return the corrected document (FastAPI still caches it)."""
    generate = app.openapi
    described: list[dict[str, Any]] = []

    def openapi() -> dict[str, Any]:
        document = generate()
        if not described or described[0] is not document:
            _correct(document)
            described[:] = [document]
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def _correct(document: dict[str, Any]) -> None:
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    schemas.update(_definition_schemas())
    security = components.setdefault("securitySchemes", {})
    for scheme in (_SECRET, _WRITE):  # the collector's operations name them without a dependency
        security.setdefault(scheme.scheme_name, scheme.model.model_dump(by_alias=True, exclude_none=True))
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    for path_item in document["paths"].values():
        for operation in path_item.values():
            answers = operation["responses"]
            generated = answers.get("422", {}).get("content", {}).get("application/json", {}).get("schema")
            if generated == {"$ref": "#/components/schemas/HTTPValidationError"}:
                del answers["422"]
                answers.setdefault("400", {"description": INVALID[400]["description"], "content": {}})
            for status, answer in answers.items():
                # Errors are JSON even where the success is a page or an image (see errors.py).
                if status[0] in "45":
                    schema = answer.get("content", {}).get("application/json", {}).get("schema", error_ref)
                    answer["content"] = {"application/json": {"schema": schema}}


def _definition_schemas() -> dict[str, Any]:
    """Journey and automation documents (the PUT bodies) as components; their ``$defs`` move
    beside them with a prefix, because both define a ``Name`` and a ``Condition`` of their own."""
    from percorso.automation.definition import json_schema as automation_schema
    from percorso.feedback.definition import json_schema as survey_schema
    from percorso.journey.definition import json_schema as journey_schema

    found: dict[str, Any] = {}
    documents = (
        ("Journey", journey_schema()),
        ("Automation", automation_schema()),
        ("Survey", survey_schema()),
    )
    for prefix, schema in documents:
        for name, definition in schema["$defs"].items():
            found[_component(prefix, name)] = _rewrite_refs(definition, prefix)
    return found


def _component(prefix: str, name: str) -> str:
    return name if name == prefix else f"{prefix}{name}"


def _rewrite_refs(value: Any, prefix: str) -> Any:
    if isinstance(value, dict):
        rewritten = {k: _rewrite_refs(v, prefix) for k, v in value.items()}
        ref = rewritten.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            rewritten["$ref"] = "#/components/schemas/" + _component(prefix, ref.removeprefix("#/$defs/"))
        return rewritten
    if isinstance(value, list):
        return [_rewrite_refs(v, prefix) for v in value]
    return value


def definition_body(component: str) -> dict[str, Any]:
    """``openapi_extra`` for an operation whose body is a journey or automation document."""
    schema = {"$ref": f"#/components/schemas/{component}"}
    return {
        "requestBody": {
            "required": True,
            "description": f"The {component.lower()} document as YAML or JSON; its `key` must be the URL's",
            "content": {"application/yaml": {"schema": schema}, "application/json": {"schema": schema}},
        }
    }
