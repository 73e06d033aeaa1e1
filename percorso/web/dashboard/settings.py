"""Dashboard pages: settings (admins only) — API keys and the people who can sign in.

A new key's secret is shown once, in the answer to the form that created it; only its hash is
kept. An admin cannot remove themselves or change their own role, so the installation never
locks out the person managing it.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from percorso.events import iso_utc
from percorso.web.dashboard.filters import PageError
from percorso.web.dashboard.render import page
from percorso.web.dashboard.twins import Admin, both_on, store_of
from percorso.web.dashboard.users import ROLES, UserError, add_user, list_users, remove_user, set_role

log = logging.getLogger("percorso.dashboard")
router = APIRouter(include_in_schema=False)
both = both_on(router)

KEY_KINDS = ("write", "secret")
NAME_MAX = 100
NOTICES = ("key_revoked", "user_added", "role_changed", "user_removed")


def _data(request: Request) -> dict[str, Any]:
    store = store_of(request)
    done = request.query_params.get("done")
    keys = [
        {
            "id": k.key_id,
            "kind": k.kind,
            "name": k.name,
            "createdAt": iso_utc(k.created_at),
            "revokedAt": iso_utc(k.revoked_at),
        }
        for k in store.api_keys()
    ]
    users = [
        {
            "email": u["email"],
            "name": u["name"],
            "role": u["role"],
            "locale": u["locale"],
            "createdAt": iso_utc(u["created_at"]),  # type: ignore[arg-type]
            "disabledAt": iso_utc(u["disabled_at"]),  # type: ignore[arg-type]
        }
        for u in list_users(store)
    ]
    return {
        "keys": keys,
        "users": users,
        "roles": list(ROLES),
        "key_kinds": list(KEY_KINDS),
        "new_key": None,
        "user_form": None,
        "notice": done if done in NOTICES else None,
    }


@both("/settings")
def settings_page(request: Request, session: Admin) -> Response:
    return page(request, "settings.html", _data(request), active="settings")


@router.post("/settings/keys")
def create_key(
    request: Request,
    session: Admin,
    kind: Annotated[str, Form(max_length=20)] = "",
    name: Annotated[str, Form(max_length=1000)] = "",
) -> Response:
    name = name.strip()
    if kind not in KEY_KINDS:
        raise PageError(f"a key is {' or '.join(KEY_KINDS)}, not {kind!r}", "kind")
    if not name or len(name) > NAME_MAX:
        raise PageError(f"give the key a name of 1 to {NAME_MAX} characters (say what uses it)", "name")
    key, secret = store_of(request).create_api_key(kind, name)
    log.info("%s key %s (%s) created by %s", kind, key.key_id, name, session.user.email)
    data = _data(request)
    data["new_key"] = {"id": key.key_id, "kind": kind, "name": name, "secret": secret}
    response = page(request, "settings.html", data, active="settings")
    response.headers["Cache-Control"] = "no-store"  # the secret must not linger in a cache
    return response


@router.post("/settings/keys/{key_id}/revoke")
def revoke_key(request: Request, session: Admin, key_id: str) -> Response:
    if len(key_id) > 40 or not store_of(request).revoke_api_key(key_id):
        raise PageError(f"there is no active key {key_id!r}", "key_id", 404)
    request.app.state.keys.forget()  # the collector and API stop accepting it now, not in 10 s
    log.info("key %s revoked by %s", key_id, session.user.email)
    return RedirectResponse("/settings?done=key_revoked#keys", status_code=303)


@router.post("/settings/users")
def create_user(
    request: Request,
    session: Admin,
    email: Annotated[str, Form(max_length=320)] = "",
    name: Annotated[str, Form(max_length=200)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
    role: Annotated[str, Form(max_length=20)] = "viewer",
) -> Response:
    try:
        add_user(store_of(request), email, password, role=role, name=name)
    except UserError as exc:
        data = _data(request)
        # The form comes back as it was sent (never the password), with the problem beside it.
        data["user_form"] = {
            "email": email,
            "name": name,
            "role": role,
            "error": str(exc),
            "field": exc.field,
        }
        return page(request, "settings.html", data, status=400, active="settings")
    log.info("user %s (%s) added by %s", email.strip().lower(), role, session.user.email)
    return RedirectResponse("/settings?done=user_added#users", status_code=303)


def _not_yourself(session: Any, email: str, what: str) -> None:
    if email.strip().lower() == session.user.email:
        raise PageError(f"you cannot {what} yourself: ask another admin", "email", 409)


@router.post("/settings/users/role")
def change_role(
    request: Request,
    session: Admin,
    email: Annotated[str, Form(max_length=320)] = "",
    role: Annotated[str, Form(max_length=20)] = "",
) -> Response:
    _not_yourself(session, email, "change the role of")
    try:
        set_role(store_of(request), email.strip(), role)
    except UserError as exc:
        raise PageError(str(exc), exc.field, 404 if exc.field == "email" else 400) from None
    log.info("user %s is now %s (by %s)", email, role, session.user.email)
    return RedirectResponse("/settings?done=role_changed#users", status_code=303)


@router.post("/settings/users/remove")
def delete_user(
    request: Request, session: Admin, email: Annotated[str, Form(max_length=320)] = ""
) -> Response:
    _not_yourself(session, email, "remove")
    if not remove_user(store_of(request), email.strip()):
        raise PageError(f"there is no user {email!r}", "email", 404)
    log.info("user %s removed by %s", email, session.user.email)
    return RedirectResponse("/settings?done=user_removed#users", status_code=303)
