"""A dashboard page and its JSON twin registered together, and the roles routes ask for.

The ``.json`` twin is registered *first*, so that ``/automations/{key}.json`` is never taken for
an automation whose key is ``reminder.json``. The overview's twin (``/``) is ``/index.json``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request

from percorso.store import Store
from percorso.web.dashboard.security import WebSession, require

Viewer = Annotated[WebSession, Depends(require("viewer"))]
Editor = Annotated[WebSession, Depends(require("editor"))]
Admin = Annotated[WebSession, Depends(require("admin"))]

__all__ = ["Admin", "Editor", "Viewer", "both_on", "store_of"]


def both_on(router: APIRouter) -> Callable[[str], Callable[[Any], Any]]:
    """``both = both_on(router)``; then ``@both("/contacts")`` serves ``/contacts`` and ``/contacts.json``."""

    def both(path: str) -> Callable[[Any], Any]:
        def register(fn: Any) -> Any:
            router.get(("/index" if path == "/" else path) + ".json")(fn)
            router.get(path)(fn)
            return fn

        return register

    return both


def store_of(request: Request) -> Store:
    store: Store = request.app.state.store
    return store
