"""``percorso demo``: generate a realistic dataset, load it through the ingestion path, serve it."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from percorso.channels import ChannelClassifier, load_rules
from percorso.collect.loader import load_messages
from percorso.events import Limits
from percorso.store import Store

if TYPE_CHECKING:
    from percorso.demo.generator import DemoSpec

MESSAGES_PER_CONTACT = 50  # the generator's average, for the progress bar


def load_demo(store: Store, spec: DemoSpec, progress: Any = None) -> dict[str, Any]:
    """Generates the demo dataset into ``store`` through the same path as the collector."""
    from percorso.demo.generator import generate

    def pairs() -> Iterator[tuple[int, dict[str, Any]]]:
        n = 0
        for person in generate(spec):
            for message in person:
                yield n, message
                n += 1

    started = time.perf_counter()
    report = load_messages(
        store,
        pairs(),
        classifier=ChannelClassifier(load_rules()),
        limits=Limits(),
        batch_size=20_000,
        source_id="demo",
        progress=progress,
    )
    store.analyze()
    return {**report.as_dict(), "seconds": round(time.perf_counter() - started, 1)}


def demo_journey(store: Store) -> str:
    """Stores the five-stage journey (unless one is stored already) and brings stages up to date."""
    from percorso.analytics.stages import get_journey, list_journeys, save_journey, update
    from percorso.journey import load_journey, template_text

    stored = list_journeys(store)
    if stored:
        journey = get_journey(store, stored[0]["key"])
    else:
        journey = load_journey(template_text("five-stages"), "five-stages")
        save_journey(store, journey, "template:five-stages")
    update(store, journey)
    return journey.key


DEMO_USER = "demo@percorso.local"


def demo_user(store: Store) -> str:
    """The demo's admin for the dashboard, with a fresh random password each run (printed once)."""
    import secrets

    from percorso.web.dashboard.users import UserError, add_user, set_password

    password = secrets.token_urlsafe(9)
    try:
        add_user(store, DEMO_USER, password, role="admin", name="Demo")
    except UserError:
        set_password(store, DEMO_USER, password)
    return password


#: Addresses that mean "every interface": the demo is then reached by other names than its own.
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def reachable_names(host: str) -> list[str]:
    """The names a browser may reach a server listening on ``host`` by: ``host`` itself, or for
    a wildcard the loopback names, this machine's name and its addresses (the one it would
    reach the network from first, which is the one printed)."""
    if host not in WILDCARD_HOSTS:
        return [host]
    import socket

    names: list[str] = []
    try:  # no packet is sent: connecting a UDP socket only picks the outgoing interface
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))
            names.append(probe.getsockname()[0])
    except OSError:
        pass
    try:
        found = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
        names += [str(info[4][0]) for info in found]
    except OSError:
        pass
    names += [socket.gethostname(), "localhost", "127.0.0.1"]
    if host == "::":
        names.append("[::1]")
    return list(dict.fromkeys(n for n in names if n))


def start_shop(app: Any, host: str, port: int) -> None:
    """Serves the demo shop in a background thread (it stops with the process)."""
    import threading

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
    threading.Thread(target=server.run, name="demo-shop", daemon=True).start()


def demo(
    contacts: Annotated[int, typer.Option(help="People in the dataset (~50 touchpoints each)")] = 20_000,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same data")] = 7,
    days: Annotated[int, typer.Option(help="Days of history")] = 183,
    fresh: Annotated[bool, typer.Option(help="Delete the existing embedded demo store first")] = False,
    serve: Annotated[bool, typer.Option(help="Start the server after loading")] = True,
    automations: Annotated[
        bool | None,
        typer.Option(
            "--automations/--no-automations",
            help="Replay the last --replay-days through the three example automations on a simulated "
            "clock, emailing PERCORSO_SMTP_*, the local inbox (`percorso automation inbox`) or, with "
            "neither, the demo's own inbox [default: on a new store]",
            show_default=False,
        ),
    ] = None,
    replay_days: Annotated[int, typer.Option(help="Days replayed through the automations")] = 4,
    responses: Annotated[
        bool, typer.Option(help="With --automations, some people confirm after a reminder (for the uplift)")
    ] = True,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Embedded store directory")] = None,
    host: Annotated[str | None, typer.Option(help="Interface to listen on")] = None,
    port: Annotated[int | None, typer.Option(help="Port")] = None,
    shop_port: Annotated[
        int | None,
        typer.Option(help="Port of the demo shop that loads percorso.js (default: port + 1; 0: no shop)"),
    ] = None,
) -> None:
    """Load a realistic six-month dataset and start the server on it."""
    from percorso.cli import console, fail, opened, progress_bar, serve_store, settings_for
    from percorso.demo.generator import DemoSpec, stories
    from percorso.demo.shop import prepare_shop, shop_app

    settings = settings_for(data_dir, host=host, port=port)
    if fresh:
        if settings.engine != "duckdb":
            raise fail("--fresh only deletes the embedded DuckDB store; empty a PostgreSQL database yourself")
        for path in (settings.duckdb_path, settings.duckdb_path.with_suffix(".duckdb.wal")):
            path.unlink(missing_ok=True)
    spec = DemoSpec(contacts=contacts, seed=seed, days=days)
    with opened(settings) as store:
        existing = store.counts()
        if existing["events"] and automations:
            raise fail("--automations replays the demo from an empty store: add --fresh")
        inbox = None
        if automations or (automations is None and not existing["events"]):
            # The example automations run over the last days as they would have live, so their
            # pages have numbers from the start; emails go to an SMTP server if there is one.
            from percorso.demo.replay import own_inbox, replay_command

            inbox = own_inbox()
            if inbox is not None:  # the server started below keeps sending there
                os.environ["PERCORSO_SMTP_HOST"], os.environ["PERCORSO_SMTP_PORT"] = (
                    "127.0.0.1",
                    str(inbox.smtp_port),
                )
            replay_command(store, spec, settings.base_url, replay_days, responses, inbox)
        elif existing["events"]:
            console.print(
                f"using the {existing['events']:,} events already in {store.describe()} (--fresh to regenerate)"
            )
        else:
            with progress_bar("loading demo data") as progress:
                task = progress.add_task("load", total=contacts * MESSAGES_PER_CONTACT)
                result = load_demo(store, spec, lambda n: progress.advance(task, n))
            console.print(
                f"loaded {result['stored']:,} events in {result['seconds']} s "
                f"({len(result['rejected'])} rejected)"
            )
        journey = demo_journey(store)
        counts = store.counts()
        _, write_key = store.create_api_key("write", "demo website")
        _, secret_key = store.create_api_key("secret", "demo admin")
        password = demo_user(store)
        # Listening on every interface, the addresses printed are ones a browser can open, and
        # the shop's key allows each name the shop may be reached by.
        names = reachable_names(settings.host)
        base = f"http://{names[0]}:{settings.port}"
        shop_at = settings.port + 1 if shop_port is None else shop_port
        shop = f"http://{names[0]}:{shop_at}" if serve and shop_at else None
        shop_key = prepare_shop(store, [f"http://{n}:{shop_at}" for n in names]) if shop else None
        console.print(
            f"\n[bold]{counts['contacts']:,} contacts, {counts['events']:,} events[/] in {store.describe()}"
        )
        console.print(f"  dashboard   {base}/   sign in as {DEMO_USER} / {password}", soft_wrap=True)
        console.print(f"  server      {base}   (API docs: {base}/docs)")
        if shop:
            console.print(
                f"  shop        {shop}/   a demo shop that loads percorso.js: register, read the Club's "
                "terms (an on-site message), buy (an NPS survey), then find yourself on the dashboard",
                soft_wrap=True,
            )
        # While the demo serves, it holds the embedded store: what to try goes through the server.
        console.print(
            f"  journey     {journey}   (try: curl -u {secret_key}: '{base}/v1/journeys/{journey}/stages'"
            f" or '{base}/v1/journeys/{journey}/painpoints')",
            soft_wrap=True,
        )
        console.print(f"  write key   {write_key}", soft_wrap=True)
        console.print(f"  secret key  {secret_key}", soft_wrap=True)
        console.print("\n[bold]Start with these people[/]:")
        for story in stories(spec):
            who = story.email or story.user_id or story.anonymous_id
            console.print(
                f"  {story.description}\n    curl -u {secret_key}: '{base}/v1/contacts/lookup?"
                f"{'email=' + story.email if story.email else 'anonymousId=' + story.anonymous_id}'"
                f"   ({who})",
                soft_wrap=True,
            )
        if serve:
            if shop and shop_key:
                wildcard = settings.host in WILDCARD_HOSTS
                start_shop(shop_app(base, shop_key, same_host=wildcard), settings.host, shop_at)
            console.print(f"\nserving on {base} — Ctrl-C to stop")
            serve_store(settings, store)
