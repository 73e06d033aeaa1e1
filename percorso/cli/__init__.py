"""The ``percorso`` command: each group of commands in its own module, above one shared module
(:mod:`percorso.cli.shared`); this one only assembles them."""

from __future__ import annotations

from typing import Annotated

import typer

from percorso.cli.automation import automation_app, worker
from percorso.cli.demo import demo
from percorso.cli.imports import import_file
from percorso.cli.journey import (
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
from percorso.cli.shared import console
from percorso.cli.store import contacts_app, keys_app, migrate, serve
from percorso.cli.users import user_app

app = typer.Typer(
    name="percorso",
    help="Customer journey platform: collect touchpoints, recognise people, map and act on the journey.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


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


app.add_typer(keys_app, name="keys")
app.add_typer(contacts_app, name="contacts")
app.command()(migrate)
app.command()(serve)
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
app.add_typer(user_app, name="user")

__all__ = ["app"]
