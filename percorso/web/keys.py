"""API key administration over REST (secret key)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Request
from pydantic import Field

from percorso.events import iso_utc
from percorso.web.auth import require_secret
from percorso.web.errors import ApiError
from percorso.web.openapi import DOCUMENT_SECRET_KEY, NO_NUL, NOT_FOUND, SECRET_KEY, RequestBody

router = APIRouter(
    prefix="/v1/keys",
    tags=["keys"],
    dependencies=[Depends(require_secret), *DOCUMENT_SECRET_KEY],
    responses=SECRET_KEY,
)


class NewKey(RequestBody):
    kind: Literal["write", "secret"]
    name: str = Field(min_length=1, max_length=100, pattern=NO_NUL)


@router.get("", summary="List API keys (secrets are never shown again)")
def list_keys(request: Request) -> dict[str, Any]:
    return {
        "keys": [
            {
                "id": k.key_id,
                "kind": k.kind,
                "name": k.name,
                "createdAt": iso_utc(k.created_at),
                "revokedAt": iso_utc(k.revoked_at),
            }
            for k in request.app.state.store.api_keys()
        ]
    }


@router.post("", summary="Create an API key; the secret is in this response only", status_code=201)
def create_key(request: Request, body: NewKey) -> dict[str, Any]:
    key, secret = request.app.state.store.create_api_key(body.kind, body.name)
    return {"id": key.key_id, "kind": key.kind, "name": key.name, "key": secret}


@router.delete("/{key_id}", summary="Revoke an API key", responses=NOT_FOUND)
def revoke_key(request: Request, key_id: Annotated[str, Path(max_length=40)]) -> dict[str, Any]:
    if not request.app.state.store.revoke_api_key(key_id):
        raise ApiError(404, "not_found", f"no active key {key_id!r}")
    request.app.state.keys.forget()
    return {"id": key_id, "revoked": True}
