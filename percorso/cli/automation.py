"""CLI for automations: ``automation validate|apply|list|stats|pause|resume|enroll|examples|schema``
and ``worker``."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from percorso.automation.definition import AutomationError, example_files, json_schema, load_automation_file

automation_app = typer.Typer(
    help="Behaviour-triggered automations: validate, apply, pause, resume, read their stats.",
    no_args_is_help=True,
)

Files = Annotated[list[Path], typer.Argument(help="Automation YAML files or directories of them")]


def _files(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for path in paths:
        out += sorted(path.glob("*.y*ml")) if path.is_dir() else [path]
    return out


@automation_app.command("validate")
def validate(paths: Files) -> None:
    """Check automation files; every problem is printed with file, line and field."""
    from percorso.cli.shared import console, fail

    bad = 0
    for path in _files(paths):
        try:
            automation = load_automation_file(path)
        except AutomationError as exc:
            bad += 1
            for problem in exc.problems:
                console.print(str(problem), markup=False, soft_wrap=True)
            continue
        console.print(
            f"{path}: ok ({automation.key}, {len(automation.steps)} steps)", markup=False, soft_wrap=True
        )
    if bad:
        raise fail(f"{bad} file(s) with problems", code=2)


@automation_app.command("apply")
def apply(
    paths: Files,
    data_dir: Annotated[Path | None, typer.Option("--data-dir")] = None,
) -> None:
    """Store automations (a changed file becomes a new version; contacts inside keep theirs)."""
    from percorso.automation.store import save_automation
    from percorso.cli.shared import console, fail, opened, settings_for

    automations = []
    for path in _files(paths):
        try:
            automations.append((path, load_automation_file(path)))
        except AutomationError as exc:
            for problem in exc.problems:
                console.print(str(problem), markup=False, soft_wrap=True)
            raise fail(f"{path} is not valid; nothing was applied", code=2) from None
    with opened(settings_for(data_dir)) as store:
        from percorso.automation.triggers import reference_problems

        problems = [
            p for path, automation in automations for p in reference_problems(store, automation, str(path))
        ]
        if problems:
            for problem in problems:
                console.print(str(problem), markup=False, soft_wrap=True)
            raise fail(
                "automations refer to journeys, stages or personas that are not stored; nothing was applied",
                code=2,
            )
        for path, automation in automations:
            saved = save_automation(store, automation, str(path), document=path.read_text(encoding="utf-8"))
            what = f"version {saved['version']}" if saved["changed"] else "unchanged"
            console.print(f"{automation.key}: {what} ({saved['status']})", markup=False)


@automation_app.command("examples")
def examples(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Directory to copy the examples into")
    ] = Path("automations"),
) -> None:
    """Copy the three example automations (registration reminder, abandoned registration,
    membership explainer) into a directory to edit and apply."""
    from percorso.cli.shared import console

    output.mkdir(parents=True, exist_ok=True)
    for path in example_files():
        target = output / path.name
        if not target.exists():
            target.write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
        console.print(f"{target}")


@automation_app.command("list")
def list_command(
    data_dir: Annotated[Path | None, typer.Option("--data-dir")] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table, json or csv")] = "table",
) -> None:
    """Every automation, its version and status, and how many contacts are inside."""
    from percorso.automation.store import list_automations
    from percorso.cli.shared import OutputFormat, emit, opened, settings_for

    with opened(settings_for(data_dir)) as store:
        rows = list_automations(store)
    emit(
        [{k: v for k, v in r.items() if k != "name"} for r in rows],
        OutputFormat(fmt),
        "automations",
    )


@automation_app.command("experiment")
def experiment(
    key: str,
    step: Annotated[str | None, typer.Option(help="The split step (default: the first)")] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir")] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table, json or csv")] = "table",
) -> None:
    """The automation's split step read as an A/B test: each arm's conversion to the goal, the
    difference with its 95% interval, the sample-ratio check, the chance to be best, a verdict."""
    from percorso.automation.store import AutomationNotFound
    from percorso.cli.shared import OutputFormat, console, emit, fail, opened, settings_for
    from percorso.experiments.automation import ExperimentError, automation_experiment

    with opened(settings_for(data_dir)) as store:
        try:
            result = automation_experiment(store, key, step)
        except (AutomationNotFound, ExperimentError) as exc:
            raise fail(str(exc), code=2) from None
    if fmt == "json":
        console.print_json(json.dumps(result, default=str))
        return
    against = {c["arm"]: c for c in result["comparisons"]}
    rows = []
    for arm in result["arms"]:
        c = against.get(arm["name"])
        rows.append(
            {
                "arm": arm["name"] + (" (control)" if arm["name"] == result["control"] else ""),
                "people": arm["exposed"],
                "converted": arm["converted"],
                "rate": f"{arm['rate'] * 100:.1f}%" if arm["rate"] is not None else "",
                "difference": f"{c['difference'] * 100:+.1f} pts"
                if c and c["difference"] is not None
                else "",
                "95% interval": f"{c['difference_interval'][0] * 100:+.1f} to {c['difference_interval'][1] * 100:+.1f}"
                if c and c["difference_interval"]
                else "",
                "p": c["p_value"] if c else "",
                "chance best": f"{arm['probability_best'] * 100:.0f}%",
            }
        )
    emit(rows, OutputFormat(fmt), f"{key}: split {result['step']}, goal {result['goal']}")
    if fmt == "table":
        console.print(result["verdict"]["en"], markup=False, soft_wrap=True)


@automation_app.command("stats")
def stats(
    key: str,
    data_dir: Annotated[Path | None, typer.Option("--data-dir")] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table, json or csv")] = "table",
) -> None:
    """Per-step counts, goal conversion per group and uplift against the holdout."""
    from percorso.automation.stats import automation_stats
    from percorso.automation.store import AutomationNotFound
    from percorso.cli.shared import OutputFormat, console, emit, fail, opened, settings_for

    with opened(settings_for(data_dir)) as store:
        try:
            result = automation_stats(store, key)
        except AutomationNotFound as exc:
            raise fail(str(exc), code=2) from None
    if fmt == "json":
        console.print_json(json.dumps(result, default=str))
        return
    rows = [
        {
            "step": s["id"],
            "kind": s["kind"],
            "entered": s["entered"],
            "now": s["now"],
            "outcomes": ", ".join(f"{k} {v}" for k, v in s["outcomes"].items()),
            "actions": ", ".join(f"{k} {v}" for k, v in s["actions"].items()),
        }
        for s in result["steps"]
    ]
    emit(rows, OutputFormat(fmt), f"{result['key']} v{result['version']} ({result['status']})")
    if fmt == "table":
        totals = result["totals"]
        console.print(
            f"enrolled {totals['enrolled']}, inside {totals['inside']}, completed {totals['completed']}, "
            f"exited by goal {totals['exited_by_goal']}, held out {totals['holdout']}",
            markup=False,
        )
        up = result["uplift"]
        if up:
            console.print(
                f"goal conversion: treatment {up['treatment']['rate']:.1%} ({up['treatment']['contacts']}), "
                f"holdout {up['holdout']['rate']:.1%} ({up['holdout']['contacts']}); uplift "
                f"{up['uplift']:+.1%} (95% CI {up['ci95'][0]:+.1%} to {up['ci95'][1]:+.1%}, p={up['p_value']})",
                markup=False,
            )


def _status(key: str, status: str, data_dir: Path | None) -> None:
    from percorso.automation.store import AutomationNotFound, set_status
    from percorso.cli.shared import console, fail, opened, settings_for

    with opened(settings_for(data_dir)) as store:
        try:
            result = set_status(store, key, status)
        except AutomationNotFound as exc:
            raise fail(str(exc), code=2) from None
    console.print(f"{result['key']}: {result['status']}", markup=False)


@automation_app.command("pause")
def pause(key: str, data_dir: Annotated[Path | None, typer.Option("--data-dir")] = None) -> None:
    """Pause: nobody enters, nobody inside moves, nothing is sent (contacts keep their place)."""
    _status(key, "paused", data_dir)


@automation_app.command("resume")
def resume(key: str, data_dir: Annotated[Path | None, typer.Option("--data-dir")] = None) -> None:
    """Resume a paused automation: overdue waits and held messages run at once."""
    _status(key, "active", data_dir)


@automation_app.command("inbox")
def inbox(
    port: Annotated[int, typer.Option(help="SMTP port to listen on")] = 1025,
    webhook_port: Annotated[
        int, typer.Option(help="Port for webhooks (the membership example posts to 8765); 0: none")
    ] = 8765,
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    save: Annotated[Path | None, typer.Option(help="Also keep each message in this directory")] = None,
) -> None:
    """Run a local inbox to try automations: an SMTP server and a webhook receiver that print
    every message as it arrives (with the time the engine sent it). Point the engine at it with
    PERCORSO_SMTP_PORT=1025."""
    from percorso.automation.inbox import LocalInbox
    from percorso.cli.shared import console, fail

    box = LocalInbox(
        host,
        port,
        webhook_port or None,
        save,
        echo=lambda line: console.print(line, markup=False, soft_wrap=True),
    )
    try:
        box.start()
    except OSError as exc:
        raise fail(
            f"cannot listen on {host}:{port} or {host}:{webhook_port}: {exc.strerror or exc}"
        ) from None
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    console.print(
        f"inbox: SMTP on {host}:{port}"
        + (f", webhooks on http://{host}:{box.webhook_port}/" if webhook_port else "")
        + (f", saving to {save}" if save else "")
        + " (Ctrl+C to stop)",
        markup=False,
    )
    done.wait()
    box.stop()
    console.print(f"{len(box.emails)} emails, {len(box.webhooks)} webhooks received", markup=False)


@automation_app.command("schema")
def schema() -> None:
    """Print the JSON Schema of automation documents (for editors)."""
    print(json.dumps(json_schema(), indent=2))


def worker(
    data_dir: Annotated[Path | None, typer.Option("--data-dir")] = None,
    interval: Annotated[float, typer.Option(help="Seconds between passes when idle")] = 0.5,
) -> None:
    """Run the automation engine: enroll on new events, run due waits, deliver the outbox.

    On PostgreSQL, run several (``percorso worker`` on each machine) next to
    ``PERCORSO_AUTOMATION_WORKER=0 percorso serve``: they share the work with row locks."""
    from percorso.automation.engine import AutomationWorker, Engine, EngineSettings
    from percorso.cli.shared import console, opened, settings_for

    settings = settings_for(data_dir)
    with opened(settings) as store:
        import os

        engine = Engine(
            store, settings=EngineSettings.from_settings(settings, worker_id=f"pid-{os.getpid()}")
        )
        runner = AutomationWorker(
            engine,
            interval=interval,
            listen_url=settings.database_url if store.engine == "postgres" else None,
        )
        done = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: done.set())
        signal.signal(signal.SIGINT, lambda *_: done.set())
        runner.start()
        console.print(f"automation worker on {store.describe()} (Ctrl+C to stop)", markup=False)
        done.wait()
        runner.stop()
