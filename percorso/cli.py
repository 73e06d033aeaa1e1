"""The ``percorso`` command line: migrate, serve, demo, import, keys, contacts."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from percorso.config import ConfigError, Settings
from percorso.store import Store, StoreError, open_store

app = typer.Typer(
    name="percorso",
    help="Customer journey platform: collect touchpoints, recognise people, map and act on the journey.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
contacts_app = typer.Typer(help="Look up, export and erase contacts.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(contacts_app, name="contacts")

console = Console()
err = Console(stderr=True)


def _version(shown: bool) -> None:
    if shown:
        from importlib.metadata import version

        console.print(f"percorso {version('percorso')}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit")
    ] = False,
) -> None:
    """Customer journey platform: collect touchpoints, recognise people, map and act on the journey."""


class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="Where the embedded store lives [env: PERCORSO_DATA_DIR]")
]
Format = Annotated[OutputFormat, typer.Option("--format", "-f", help="Output format")]


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


def settings_for(data_dir: Path | None = None, **overrides: Any) -> Settings:
    try:
        return Settings.from_env(data_dir=data_dir, **overrides)
    except ConfigError as exc:
        raise fail(str(exc)) from None


@contextmanager
def opened(settings: Settings) -> Iterator[Store]:
    try:
        store = open_store(settings)
    except StoreError as exc:
        raise fail(str(exc)) from None
    try:
        yield store
    finally:
        store.close()


def emit(rows: list[dict[str, Any]], fmt: OutputFormat, title: str | None = None) -> None:
    """Prints rows as a Rich table, JSON or CSV."""
    if fmt is OutputFormat.json:
        sys.stdout.write(json.dumps(rows, indent=2, default=str, ensure_ascii=False) + "\n")
        return
    columns = list(dict.fromkeys(k for row in rows for k in row))
    if fmt is OutputFormat.csv:
        import csv

        from percorso.spreadsheet import safe_row

        writer = csv.writer(sys.stdout)
        writer.writerow(safe_row(columns))
        for row in rows:
            writer.writerow(safe_row(_csv_value(row.get(c, "")) for c in columns))
        return
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*[_cell(row.get(c)) for c in columns])
    console.print(table)


def _csv_value(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (dict, list)) else value


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


# -- store --------------------------------------------------------------------------------------
@app.command()
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


@app.command()
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


def proxy_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's X-Forwarded-For options: believed only from PERCORSO_TRUSTED_PROXIES."""
    from percorso.web.throttle import proxy_options as options

    try:
        return options(settings.trusted_proxies)
    except ValueError as exc:
        raise fail(f"PERCORSO_TRUSTED_PROXIES: {exc}") from None


def serve_store(settings: Settings, store: Store) -> None:
    """Runs the application on an open store until interrupted."""
    import uvicorn

    from percorso.web.app import create_app

    uvicorn.run(
        create_app(settings, store),
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
        **proxy_options(settings),
    )


def progress_bar(description: str = "{task.description}") -> Progress:
    """The progress bar long commands show on stderr."""
    return Progress(
        TextColumn(f"[bold]{description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
    )


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


# -- import and demo live in their own modules to keep this file about commands --------------------
from percorso.cli_automation import automation_app, worker  # noqa: E402
from percorso.cli_import import import_file  # noqa: E402
from percorso.cli_journey import (  # noqa: E402
    attribution_command,
    funnel_command,
    init,
    journey_app,
    map_command,
    painpoints_command,
    paths_command,
    retention_command,
    stages_app,
    transitions_command,
)
from percorso.demo.command import demo  # noqa: E402

app.command("import")(import_file)
app.command("demo")(demo)
app.command("init")(init)
app.command("funnel")(funnel_command)
app.command("painpoints")(painpoints_command)
app.command("map")(map_command)
app.command("paths")(paths_command)
app.command("transitions")(transitions_command)
app.command("retention")(retention_command)
app.command("attribution")(attribution_command)
app.add_typer(journey_app, name="journey")
app.add_typer(stages_app, name="stages")
app.add_typer(automation_app, name="automation")
app.command("worker")(worker)

from percorso.cli_users import user_app  # noqa: E402

app.add_typer(user_app, name="user")

if __name__ == "__main__":
    app()
