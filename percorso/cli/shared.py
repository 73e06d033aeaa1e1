"""What every command shares: the consoles, the output formats, opening the store, failing
with a message, progress bars and serving the application."""

from __future__ import annotations

import json
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

console = Console()
err = Console(stderr=True)


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
