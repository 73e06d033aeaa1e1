"""``percorso demo``: the demo dataset loaded (or replayed through the example automations),
the demo user, keys and shop, and the server on them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from percorso.cli.shared import (
    OutputFormat,
    console,
    emit,
    fail,
    opened,
    progress_bar,
    serve_store,
    settings_for,
)
from percorso.demo.command import (
    DEMO_USER,
    MESSAGES_PER_CONTACT,
    WILDCARD_HOSTS,
    demo_journey,
    demo_user,
    load_demo,
    reachable_names,
    start_shop,
)
from percorso.demo.replay import answers, demo_smtp, own_inbox, replay_demo
from percorso.store import Store

if TYPE_CHECKING:
    from percorso.automation.inbox import LocalInbox
    from percorso.demo.generator import DemoSpec


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


def replay_command(
    store: Store, spec: DemoSpec, base_url: str, days: int, responses: bool, inbox: LocalInbox | None = None
) -> None:
    """What ``percorso demo`` prints around :func:`replay_demo` (``inbox``: the demo's own)."""
    import logging
    import os

    from percorso.automation.inbox import DEMO_WEBHOOK_SECRET, WEBHOOK_SECRET_ENV

    if days < 1 or days >= spec.days:
        raise fail(f"--replay-days must be between 1 and {spec.days - 1} (the demo has {spec.days} days)")
    smtp = demo_smtp()
    if not answers(smtp.host, smtp.port):
        raise fail(
            f"no SMTP server answers at {smtp.host}:{smtp.port}. Start the local inbox in another terminal "
            "(percorso automation inbox), or point PERCORSO_SMTP_HOST/PERCORSO_SMTP_PORT at yours"
        ) from None
    os.environ.setdefault(WEBHOOK_SECRET_ENV, DEMO_WEBHOOK_SECRET)  # the membership example signs with it
    console.print(
        f"replaying the last {days} days through the example automations on a simulated clock; "
        + (
            "emails go to the demo's own inbox (start `percorso automation inbox` first to watch them)"
            if inbox is not None
            else f"emails go to {smtp.host}:{smtp.port}"
        )
    )
    # Retries of an unreachable webhook are expected here (and counted in the stats): keep quiet.
    engine_log = logging.getLogger("percorso.automation")
    level = engine_log.level
    engine_log.setLevel(logging.ERROR)
    try:
        with progress_bar("loading and replaying") as progress:
            task = progress.add_task("replay", total=spec.contacts * MESSAGES_PER_CONTACT)
            report = replay_demo(
                store,
                spec,
                days=days,
                smtp=smtp,
                base_url=base_url,
                responses=responses,
                progress=lambda n: progress.advance(task, n),
            )
            progress.update(
                task, total=report.history + report.replayed, completed=report.history + report.replayed
            )
    finally:
        engine_log.setLevel(level)
    console.print(
        f"loaded {report.history:,} touchpoints, then replayed {report.replayed:,} from "
        f"{report.start:%Y-%m-%d %H:%M} to {report.end:%Y-%m-%d %H:%M} UTC in {report.seconds} s"
        + (f" ({report.responses} people confirmed after a reminder)" if report.responses else "")
    )
    emit(report.automations, OutputFormat.table, "example automations")
    if inbox is not None:
        console.print(
            f"the demo's inbox received {len(inbox.emails):,} emails and {len(inbox.webhooks):,} webhooks; "
            "each automation's steps, sends and holdout uplift are on the dashboard's Automations page",
            markup=False,
        )
    else:
        console.print(
            "per-step stats and the holdout's uplift: percorso automation stats registration-reminder\n"
            f"(`percorso serve` keeps running them on the real clock, sending to PERCORSO_SMTP_*: "
            f"export PERCORSO_SMTP_PORT={smtp.port} to keep using the same inbox)",
            markup=False,
        )
