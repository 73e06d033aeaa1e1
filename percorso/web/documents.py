"""Definitions sent over the API (journeys, automations): read the YAML or JSON body, load it
with the document's own validator, and answer problems the way every endpoint does."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from fastapi import Request

from percorso.journey.definition import Problem
from percorso.web.errors import ApiError


class Keyed(Protocol):
    key: str


D = TypeVar("D", bound=Keyed)


def problems_error(code: str, problems: list[Problem]) -> ApiError:
    """422 naming the first problem (line and field), with every problem listed."""
    listed = [p.as_dict() for p in problems]
    return ApiError(422, code, str(problems[0]), listed[0]["field"] or None, problems=listed)


async def document_body(
    request: Request, key: str, load: Callable[[str, str], D], errors: type[Exception], code: str
) -> D:
    """The body loaded by ``load`` (YAML or JSON text); its ``key`` must be the URL's."""
    try:
        text = (await request.body()).decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "invalid_body", "the body is not UTF-8 text") from None
    try:
        document = load(text, "body")
    except errors as exc:
        problems: Any = getattr(exc, "problems", [])
        raise problems_error(code, problems) from None
    if document.key != key:
        raise ApiError(
            400, "invalid_request", f"the document's key is {document.key!r}, the URL says {key!r}", "key"
        )
    return document
