"""``percorso migrate``, ``serve``, ``keys`` and ``contacts``: the store and its access."""

from __future__ import annotations

import json
import os
import sys
from enum import Enum
from typing import Annotated

import typer

from percorso.cli.shared import (
    DataDir,
    Format,
    OutputFormat,
    console,
    emit,
    fail,
    opened,
    proxy_options,
    serve_store,
    settings_for,
)
from percorso.store import Store, StoreError, open_store

keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
contacts_app = typer.Typer(help="Look up, export and erase contacts.", no_args_is_help=True)


# -- store --------------------------------------------------------------------------------------
def migrate(data_dir: DataDir = None) -> None:
    """Apply pending schema migrations to the configured store."""
    settings = settings_for(data_dir)
    try:
        store = open_store(settings, migrate=False)
        applied = store.migrate()
        version = store.schema_version()
        store.close()
    except StoreError as exc:
        raise fail(str(exc)) from None
    for name in applied:
        console.print(f"applied migration {name}")
    console.print(f"{settings.engine} store at schema version {version}")


def serve(
    data_dir: DataDir = None,
    host: Annotated[str | None, typer.Option(help="Interface to listen on [env: PERCORSO_HOST]")] = None,
    port: Annotated[int | None, typer.Option(help="Port [env: PERCORSO_PORT]")] = None,
    workers: Annotated[int, typer.Option(help="Server processes (PostgreSQL only: DuckDB allows one)")] = 1,
) -> None:
    """Run the collector and REST API."""
    import uvicorn

    settings = settings_for(data_dir, host=host, port=port)
    if workers > 1:
        if settings.engine != "postgres":
            raise fail("--workers needs PostgreSQL: one process owns an embedded DuckDB store")
        with opened(settings):  # migrate once, before the workers start
            pass
        console.print(f"percorso on http://{settings.host}:{settings.port} with {workers} processes")
        if data_dir is not None:
            os.environ["PERCORSO_DATA_DIR"] = str(data_dir)
        uvicorn.run(
            "percorso.web.app:app_from_env",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=workers,
            log_level="warning",
            access_log=False,
            **proxy_options(settings),
        )
        return
    with opened(settings) as store:
        console.print(f"percorso on http://{settings.host}:{settings.port}  (store: {store.describe()})")
        console.print(f"API docs: http://{settings.host}:{settings.port}/docs")
        serve_store(settings, store)


# -- keys ---------------------------------------------------------------------------------------
class KeyKind(str, Enum):
    write = "write"
    secret = "secret"


@keys_app.command("create")
def keys_create(
    kind: Annotated[
        KeyKind, typer.Option("--kind", help="write: send data only; secret: read and administer")
    ],
    name: Annotated[str, typer.Option("--name", help="What the key is for, e.g. 'website'")],
    origin: Annotated[
        list[str] | None,
        typer.Option(
            "--origin",
            help="A web origin browsers may send with this write key from, e.g. https://shop.example "
            "(repeatable; '*' allows any site)",
        ),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Create an API key. The key is printed once; only its hash is stored."""
    origins = _origins(origin or [])
    with opened(settings_for(data_dir)) as store:
        key, secret = store.create_api_key(kind.value, name, origins)
    console.print(f"{key.kind} key {key.key_id} ({key.name}):")
    print(secret)


def _origins(given: list[str]) -> list[str]:
    from percorso.collect.browser import OriginError, normalise_origin

    try:
        return list(dict.fromkeys(normalise_origin(o) for o in given))
    except OriginError as exc:
        raise fail(str(exc)) from None


@keys_app.command("origins")
def keys_origins(
    key_id: str,
    origins: Annotated[
        list[str] | None, typer.Argument(help="Web origins, e.g. https://shop.example; none to clear")
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Set the web origins browsers may send with a write key from (replacing the list)."""
    allowed = _origins(origins or [])
    with opened(settings_for(data_dir)) as store:
        key = store.set_key_origins(key_id, allowed)
    if key is None:
        raise fail(f"no active key {key_id!r}; see `percorso keys list`")
    console.print(f"{key_id}: " + (", ".join(key.origins) or "no web origins (server-side only)"))


@keys_app.command("list")
def keys_list(data_dir: DataDir = None, fmt: Format = OutputFormat.table) -> None:
    """List API keys."""
    with opened(settings_for(data_dir)) as store:
        keys = store.api_keys()
    emit(
        [
            {
                "id": k.key_id,
                "kind": k.kind,
                "name": k.name,
                "origins": " ".join(k.origins),
                "created": k.created_at.isoformat(),
                "revoked": k.revoked_at.isoformat() if k.revoked_at else None,
            }
            for k in keys
        ],
        fmt,
        "API keys",
    )


@keys_app.command("revoke")
def keys_revoke(key_id: str, data_dir: DataDir = None) -> None:
    """Revoke an API key by its id."""
    with opened(settings_for(data_dir)) as store:
        if not store.revoke_api_key(key_id):
            raise fail(f"no active key {key_id!r}; see `percorso keys list`")
    console.print(f"revoked {key_id}")


# -- contacts -----------------------------------------------------------------------------------
def _contact_id(store: Store, ref: str) -> int:
    from percorso.identity import ANONYMOUS_ID, EMAIL, USER_ID
    from percorso.store.contacts import ContactNotFound, find_contact

    try:
        if ref.isdigit():
            return int(ref)
        if "@" in ref:
            return find_contact(store, EMAIL, ref)
        try:
            return find_contact(store, USER_ID, ref)
        except ContactNotFound:
            return find_contact(store, ANONYMOUS_ID, ref)
    except ContactNotFound:
        raise fail(
            f"no contact for {ref!r} (give a contact id, an email, a userId or an anonymousId)"
        ) from None


@contacts_app.command("search")
def contacts_search(
    q: Annotated[str | None, typer.Argument(help="Substring of an email, userId or anonymousId")] = None,
    trait: Annotated[list[str] | None, typer.Option(help="name=value, repeatable")] = None,
    channel: Annotated[str | None, typer.Option(help="Has touchpoints in this channel")] = None,
    known: Annotated[bool | None, typer.Option("--known/--anonymous", help="Only known / anonymous")] = None,
    limit: int = 20,
    data_dir: DataDir = None,
    fmt: Format = OutputFormat.table,
) -> None:
    """Search contacts, most recently seen first."""
    from percorso.store.contacts import BadQuery, ContactQuery, search_contacts

    traits = []
    for item in trait or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise fail(f"--trait {item!r}: write it as name=value")
        traits.append((name, value))
    with opened(settings_for(data_dir)) as store:
        try:
            page = search_contacts(
                store, ContactQuery(q=q, traits=tuple(traits), channel=channel, known=known, limit=limit)
            )
        except BadQuery as exc:
            raise fail(str(exc)) from None
    emit(
        [
            {k: c[k] for k in ("id", "email", "userId", "firstSeen", "lastSeen", "events")}
            for c in page["contacts"]
        ],
        fmt,
        "Contacts",
    )


@contacts_app.command("show")
def contacts_show(
    ref: Annotated[str, typer.Argument(help="Contact id, email, userId or anonymousId")],
    timeline: Annotated[int, typer.Option(help="How many recent touchpoints to show")] = 15,
    data_dir: DataDir = None,
    fmt: Format = OutputFormat.table,
) -> None:
    """A contact's profile and recent timeline."""
    from percorso.store.contacts import contact_profile, contact_timeline

    with opened(settings_for(data_dir)) as store:
        cid = _contact_id(store, ref)
        profile = contact_profile(store, cid)
        events = contact_timeline(store, cid, limit=timeline)["events"] if timeline else []
    if fmt is OutputFormat.json:
        emit([{**profile, "timeline": events}], fmt)
        return
    console.print(
        f"[bold]contact {profile['id']}[/]  first seen {profile['firstSeen']}  last seen {profile['lastSeen']}"
    )
    for ident in profile["identifiers"]:
        console.print(f"  {ident['kind']:<13} {ident['value']}")
    console.print(f"  traits: {json.dumps(profile['traits'], ensure_ascii=False)}")
    console.print(f"  channels: {profile['channels']}")
    emit(
        [
            {
                "time": e["timestamp"],
                "channel": e["channel"],
                "type": e["type"],
                "what": e.get("event")
                or e.get("name")
                or (e.get("context", {}).get("page", {}) or {}).get("path"),
            }
            for e in events
        ],
        fmt,
        "Timeline (newest first)",
    )


@contacts_app.command("export")
def contacts_export(ref: str, data_dir: DataDir = None) -> None:
    """Everything held on a contact, as JSON (data-subject access request)."""
    from percorso.store.contacts import export_contact

    with opened(settings_for(data_dir)) as store:
        data = export_contact(store, _contact_id(store, ref))
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


@contacts_app.command("erase")
def contacts_erase(
    ref: str,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation")] = False,
    data_dir: DataDir = None,
) -> None:
    """Erase a contact: every event, identifier and trait. Cannot be undone."""
    from percorso.store.contacts import erase_contact

    with opened(settings_for(data_dir)) as store:
        cid = _contact_id(store, ref)
        if not yes and not typer.confirm(f"Erase contact {cid} and all their events?"):
            raise typer.Exit(1)
        result = erase_contact(store, cid)
        compacted = store.compact()  # this command has the embedded file to itself
    console.print(
        f"erased contact {result['erased']}: {result['events']} events, {result['identities']} identifiers"
        + (f"; the database file was rewritten without them ({compacted['seconds']} s)" if compacted else "")
    )
