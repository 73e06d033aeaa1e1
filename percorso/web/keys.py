"""API key administration over REST (secret key)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Request
from pydantic import Field

from percorso.collect.browser import OriginError, normalise_origin
from percorso.events import iso_utc
from percorso.store import ApiKey
from percorso.web.auth import require_secret
from percorso.web.errors import ApiError
from percorso.web.openapi import DOCUMENT_SECRET_KEY, NO_NUL, NOT_FOUND, SECRET_KEY, RequestBody

router = APIRouter(
    prefix="/v1/keys",
    tags=["keys"],
    dependencies=[Depends(require_secret), *DOCUMENT_SECRET_KEY],
    responses=SECRET_KEY,
)


#: What an origin looks like, for the OpenAPI document (normalise_origin decides).
ORIGIN_PATTERN = (
    r"^(\*|[hH][tT][tT][pP][sS]?://[A-Za-z0-9.-]+"
    r"(:([0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?/?)$"
)
# The pattern is for the document only: normalise_origin gives the message a person can act on.
_ORIGIN = Annotated[str, Field(max_length=300, json_schema_extra={"pattern": ORIGIN_PATTERN})]
_ORIGINS: Any = Field(
    default_factory=list,
    max_length=50,
    description="web origins browsers may send with a write key from (scheme://host[:port]; '*': any)",
)


class NewKey(RequestBody):
    kind: Literal["write", "secret"]
    name: str = Field(min_length=1, max_length=100, pattern=NO_NUL)
    origins: list[_ORIGIN] = _ORIGINS


class KeyOrigins(RequestBody):
    origins: list[_ORIGIN] = _ORIGINS


def _origins(given: list[str]) -> list[str]:
    try:
        return list(dict.fromkeys(normalise_origin(o) for o in given))
    except OriginError as exc:
        raise ApiError(400, "invalid_request", f"origins: {exc}", "origins") from None


def _shown(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.key_id,
        "kind": key.kind,
        "name": key.name,
        "origins": list(key.origins),
        "createdAt": iso_utc(key.created_at),
        "revokedAt": iso_utc(key.revoked_at),
    }


@router.get("", summary="List API keys (secrets are never shown again)")
def list_keys(request: Request) -> dict[str, Any]:
    return {"keys": [_shown(k) for k in request.app.state.store.api_keys()]}


@router.post("", summary="Create an API key; the secret is in this response only", status_code=201)
def create_key(request: Request, body: NewKey) -> dict[str, Any]:
    key, secret = request.app.state.store.create_api_key(body.kind, body.name, _origins(body.origins))
    request.app.state.keys.forget()
    return {"id": key.key_id, "kind": key.kind, "name": key.name, "origins": list(key.origins), "key": secret}


@router.put(
    "/{key_id}/origins", summary="Set the web origins browsers may send with a key from", responses=NOT_FOUND
)
def set_origins(
    request: Request, key_id: Annotated[str, Path(max_length=40)], body: KeyOrigins
) -> dict[str, Any]:
    key = request.app.state.store.set_key_origins(key_id, _origins(body.origins))
    if key is None:
        raise ApiError(404, "not_found", f"no active key {key_id!r}")
    request.app.state.keys.forget()
    return _shown(key)


@router.delete("/{key_id}", summary="Revoke an API key", responses=NOT_FOUND)
def revoke_key(request: Request, key_id: Annotated[str, Path(max_length=40)]) -> dict[str, Any]:
    if not request.app.state.store.revoke_api_key(key_id):
        raise ApiError(404, "not_found", f"no active key {key_id!r}")
    request.app.state.keys.forget()
    return {"id": key_id, "revoked": True}
