"""CLI for journey definitions and analytics: ``init``, ``journey validate|schema``, ``funnel``."""

from __future__ import annotations

import json
import re
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from percorso.analytics.period import default_period
from percorso.journey.definition import (
    DURATION_PATTERN,
    JourneyError,
    duration_seconds,
    journey_node,
    json_schema,
    load_journey_file,
    unknown_event_names,
)
from percorso.journey.templates import TEMPLATES, template_text

journey_app = typer.Typer(
    help="Journey definitions: validate them, publish their JSON Schema.", no_args_is_help=True
)


def init(
    template: Annotated[
        str, typer.Option(help=f"One of: {', '.join(TEMPLATES)}", show_default=True)
    ] = "five-stages",
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the journey")] = Path(
        "journey.yaml"
    ),
    force: Annotated[bool, typer.Option(help="Overwrite an existing file")] = False,
) -> None:
    """Start a journey definition from a template (names in English and Italian)."""
    from percorso.cli.shared import console, fail

    if template not in TEMPLATES:
        raise fail(f"no template {template!r}; choose one of: {', '.join(TEMPLATES)}", code=2)
    if output.exists() and not force:
        raise fail(f"{output} exists; use --force to overwrite it", code=2)
    output.write_text(template_text(template), encoding="utf-8")
    console.print(f"wrote {output} ({TEMPLATES[template]})")


@journey_app.command("validate")
def validate(
    path: Annotated[Path, typer.Argument(help="A journey YAML file")],
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Check event names against this store")
    ] = None,
    check_data: Annotated[bool, typer.Option(help="Warn about event names never seen in the data")] = False,
) -> None:
    """Check a journey file; every problem is reported with its line and field."""
    from percorso.cli.shared import console, opened, settings_for

    try:
        journey = load_journey_file(path)
    except JourneyError as exc:
        for problem in exc.problems:
            typer.echo(str(problem))
        raise typer.Exit(2) from None
    warnings = []
    if check_data:
        with opened(settings_for(data_dir)) as store, store.session() as s:
            known = [r[0] for r in s.rows("SELECT DISTINCT event FROM events WHERE event IS NOT NULL")]
        warnings = unknown_event_names(
            journey, known, journey_node(path.read_text(encoding="utf-8")), str(path)
        )
    for warning in warnings:
        typer.echo(str(warning))
    console.print(
        f"{path}: journey {journey.key!r} is valid — {len(journey.stages)} stages, "
        f"{len(journey.touchpoints)} touchpoints, {len(journey.personas)} personas"
        + (f", {len(warnings)} warnings" if warnings else "")
    )


@journey_app.command("schema")
def schema() -> None:
    """Print the JSON Schema of journey documents (for editors)."""
    sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")


def _parse_day(value: str, name: str, *, last_day: bool = False) -> datetime:
    """A period's bound: a date is its midnight UTC — or, as a period's ``last_day``, included,
    as on the dashboard (``--to 2026-06-30`` ends at the midnight after it); a date and time is
    that instant."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a date (YYYY-MM-DD)", param_hint=name) from None
    parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    if last_day and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value.strip()):
        parsed += timedelta(days=1)
    return parsed


def _period(since: str | None, until: str | None) -> tuple[datetime, datetime]:
    """``--from``/``--to`` as given, else the dashboard's default period (182 days and today)."""
    default_start, default_end = default_period()
    end = _parse_day(until, "--to", last_day=True) if until else default_end
    start = _parse_day(since, "--from") if since else end - (default_end - default_start)
    return start, end


def funnel_command(
    step: Annotated[
        list[str],
        typer.Option(
            "--step",
            "-s",
            help="A step, in order: an event name ('Order Completed'), or event:/page:/type:/channel:/name:"
            "/property.KEY: with globs (page:/checkout/*); join with ' & '",
        ),
    ],
    since: Annotated[
        str | None, typer.Option("--from", help="First day (YYYY-MM-DD); default 182 days before today")
    ] = None,
    until: Annotated[
        str | None, typer.Option("--to", help="Last day, included (YYYY-MM-DD); default today")
    ] = None,
    window: Annotated[
        str, typer.Option(help="Conversion window from the first step: 30m, 12h, 14d, 2w")
    ] = "14d",
    breakdown: Annotated[
        str | None,
        typer.Option(
            help="channel, campaign, platform, property:KEY (of the first step), trait:KEY, persona "
            "(of --journey) or first_campaign (utm_campaign of the contact's first event)"
        ),
    ] = None,
    top: Annotated[int, typer.Option(help="Breakdown groups shown; the rest are '(other)'")] = 10,
    order: Annotated[
        str,
        typer.Option(
            help="ordered (other events may come between steps), strict (each step is the next "
            "tracked event) or any (later steps in any order)"
        ),
    ] = "ordered",
    exclude: Annotated[
        list[str] | None,
        typer.Option(
            "--exclude",
            "-x",
            help="Exclusion step: contacts who do it between two steps are excluded from conversion; "
            "'Coupon Applied' (whole funnel) or '2-3:Coupon Applied' (between step 2 and 3)",
        ),
    ] = None,
    journey: Annotated[
        str | None,
        typer.Option(help="Journey whose personas --breakdown persona uses (default: the only one)"),
    ] = None,
    unit: Annotated[
        str,
        typer.Option(
            help="What one entry is: contacts (each once), sessions (each visit) or attempts "
            "(every step-1 event, until the contact's next)"
        ),
    ] = "contacts",
    session_gap: Annotated[
        str,
        typer.Option(
            "--session-gap", help="With --unit sessions: a visit ends after this long without an event"
        ),
    ] = "30m",
    dropped_at: Annotated[
        int | None, typer.Option("--dropped-at", help="List the contacts who dropped after step K instead")
    ] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Embedded store directory")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, csv or json")] = "table",
) -> None:
    """Funnel conversion between steps (ordered, strict or any order), in contacts, visits or attempts."""
    import re

    from percorso.analytics.funnel import (
        FunnelError,
        FunnelSpec,
        dropped_contacts,
        funnel,
        parse_exclusion,
        parse_step,
    )
    from percorso.analytics.stages import StageError, get_journey
    from percorso.cli.shared import OutputFormat, console, emit, fail, opened, settings_for

    if fmt not in ("table", "csv", "json"):
        raise typer.BadParameter("table, csv or json", param_hint="--format")
    if not re.match(DURATION_PATTERN, window):
        raise typer.BadParameter(f"{window!r}: use 30m, 12h, 14d or 2w", param_hint="--window")
    if not re.match(DURATION_PATTERN, session_gap):
        raise typer.BadParameter(f"{session_gap!r}: use 30m, 12h, 14d or 2w", param_hint="--session-gap")
    start, end = _period(since, until)
    try:
        spec = FunnelSpec(
            steps=[parse_step(s) for s in step],
            start=start,
            end=end,
            window_seconds=duration_seconds(window),
            breakdown=breakdown,
            top=top,
            order=order,
            exclusions=tuple(parse_exclusion(x) for x in exclude or []),
            unit=unit,
            session_gap=duration_seconds(session_gap),
        )
        if breakdown != "persona":
            spec.check()
        with opened(settings_for(data_dir)) as store:
            if breakdown == "persona":
                spec = replace(spec, journey=get_journey(store, journey))
                spec.check()
            if dropped_at is not None:
                audience = dropped_contacts(store, spec, dropped_at)
                emit(audience, OutputFormat(fmt), title=f"dropped after step {dropped_at}")
                return
            result = funnel(store, spec)
    except (FunnelError, StageError) as exc:
        raise fail(str(exc), code=2) from None
    if fmt == "json":
        sys.stdout.write(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        return
    groups = result["breakdown"]["groups"] if result["breakdown"] else [result["total"]]
    rows: list[dict[str, Any]] = []
    for group in groups:
        for s in group["steps"]:
            row: dict[str, Any] = {}
            if result["breakdown"]:
                row["group"] = group["group"]
            row.update(
                step=s["step"],
                label=s["label"],
                **{result["unit"]: s["contacts"]},
                conv=_pct(s["conversion_from_previous"]),
                overall=_pct(s["conversion_from_first"]),
                open=s.get("in_progress", ""),
                dropped=s.get("dropped", ""),
            )
            if result["exclusions"]:
                row["excluded"] = s.get("excluded", "")
            row["median"] = _human(s.get("median_seconds_from_previous"))
            rows.append(row)
    emit(
        rows,
        OutputFormat(fmt),
        title=f"funnel ({result['order']}) {result['period']['start'][:10]} → {result['period']['end'][:10]}, "
        f"window {result['window']}",
    )
    if fmt == "table":
        console.print(
            f"[dim]{result['counting']}; in progress = window still open as of {result['as_of'][:16]}[/]"
        )


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value * 100:.1f}%"


def _human(seconds: float | None) -> str:
    if seconds is None:
        return ""
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


# -- stored journeys and stages ------------------------------------------------------------------

stages_app = typer.Typer(
    help="Where each contact is in a journey: the stage overview, updates and rebuilds.",
    invoke_without_command=True,
)


@journey_app.command("apply")
def apply(
    path: Annotated[Path, typer.Argument(help="A journey YAML file")],
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Embedded store directory")] = None,
) -> None:
    """Store (or replace) a journey and compute its stage history."""
    from percorso.analytics.stages import save_journey, update
    from percorso.cli.shared import console, opened, settings_for

    try:
        journey = load_journey_file(path)
    except JourneyError as exc:
        for problem in exc.problems:
            typer.echo(str(problem))
        raise typer.Exit(2) from None
    with opened(settings_for(data_dir)) as store:
        saved = save_journey(store, journey, str(path))
        report = update(store, journey)
    verb = "stored" if saved["created"] else "replaced"
    console.print(
        f"{verb} journey {journey.key!r}; stage history of {report.contacts:,} {report.subject}s "
        f"({report.entries:,} stage entries) in {report.seconds} s"
    )


@journey_app.command("list")
def list_command(
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Embedded store directory")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, csv or json")] = "table",
) -> None:
    """The journeys stored, with how far their stage history goes."""
    from percorso.analytics.stages import list_journeys
    from percorso.cli.shared import emit, opened, settings_for

    with opened(settings_for(data_dir)) as store:
        emit(list_journeys(store), _format(fmt), title="journeys")


def _format(fmt: str) -> Any:
    from percorso.cli.shared import OutputFormat

    try:
        return OutputFormat(fmt)
    except ValueError:
        raise typer.BadParameter("table, csv or json", param_hint="--format") from None


def _duration(value: str, name: str) -> timedelta:
    import re

    if not re.match(DURATION_PATTERN, value):
        raise typer.BadParameter(f"{value!r}: use 30m, 12h, 14d or 2w", param_hint=name)
    return timedelta(seconds=duration_seconds(value))


@stages_app.callback()
def stages_overview(
    ctx: typer.Context,
    journey: Annotated[str | None, typer.Option(help="Journey key (default: the only one stored)")] = None,
    stuck_after: Annotated[str, typer.Option(help="Stuck: in the same stage longer than this")] = "30d",
    since: Annotated[
        str | None, typer.Option("--from", help="Period start (YYYY-MM-DD); default 182 days before today")
    ] = None,
    until: Annotated[
        str | None, typer.Option("--to", help="Last day, included (YYYY-MM-DD); default today")
    ] = None,
    lang: Annotated[str, typer.Option(help="Stage names in en or it")] = "en",
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Embedded store directory")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, csv or json")] = "table",
) -> None:
    """Contacts per stage, conversion to the next stage, time in stage and stuck contacts."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = {"journey": journey, "data_dir": data_dir, "fmt": fmt, "stuck_after": stuck_after}
        return
    from percorso.analytics.stages import StageError, get_journey, stage_overview, update
    from percorso.cli.shared import console, emit, fail, opened, settings_for

    output = _format(fmt)
    stuck = _duration(stuck_after, "--stuck-after")
    start, end = _period(since, until)
    if lang not in ("en", "it"):
        raise typer.BadParameter("en or it", param_hint="--lang")
    try:
        with opened(settings_for(data_dir)) as store:
            chosen = get_journey(store, journey)
            update(store, chosen)
            result = stage_overview(store, chosen, stuck_after=stuck, since=start, until=end, lang=lang)
    except StageError as exc:
        raise fail(str(exc), code=2) from None
    if fmt == "json":
        sys.stdout.write(json.dumps(result, indent=2, ensure_ascii=False, default=str) + "\n")
        return
    rows = [
        {
            "stage": s["name"],
            "now": s["current_contacts"],
            "entered": s["entered_in_period"],
            "to next": _pct(s["conversion_to_next"]),
            "median time": _human(s["median_seconds_in_stage"]),
            "p90 time": _human(s["p90_seconds_in_stage"]),
            f"stuck >{stuck_after}": s["stuck"],
        }
        for s in result["stages"]
    ]
    noun = "accounts" if result["subject"] == "account" else "contacts"
    emit(
        rows,
        output,
        title=f"{chosen.key} ({noun}): {result['period']['start'][:10]} → {result['period']['end'][:10]}",
    )
    if fmt == "table":
        console.print(f"[dim]{result['notes']}[/]")


@stages_app.command("update")
def stages_update(ctx: typer.Context) -> None:
    """Bring stage history up to date with the events received since the last update."""
    _stage_run(ctx, full=False)


@stages_app.command("rebuild")
def stages_rebuild(ctx: typer.Context) -> None:
    """Recompute every contact's stage history from scratch."""
    _stage_run(ctx, full=True)


def _stage_run(ctx: typer.Context, *, full: bool) -> None:
    from percorso.analytics.stages import StageError, get_journey, rebuild, update
    from percorso.cli.shared import console, fail, opened, settings_for

    options = ctx.obj or {}
    try:
        with opened(settings_for(options.get("data_dir"))) as store:
            journey = get_journey(store, options.get("journey"))
            report = (rebuild if full else update)(store, journey)
    except StageError as exc:
        raise fail(str(exc), code=2) from None
    console.print(
        f"{report.journey}: {report.mode}, {report.contacts:,} {report.subject}s, {report.entries:,} stage entries "
        f"in {report.seconds} s"
    )


@stages_app.command("stuck")
def stages_stuck(
    ctx: typer.Context,
    stage: Annotated[str, typer.Argument(help="Stage key")],
    limit: Annotated[int, typer.Option(help="Most contacts listed")] = 1000,
) -> None:
    """Contacts (or accounts) who have been in STAGE longer than --stuck-after (an audience for a nudge)."""
    from percorso.analytics.stages import StageError, get_journey, stuck_contacts
    from percorso.cli.shared import emit, fail, opened, settings_for

    options = ctx.obj or {}
    stuck = _duration(options.get("stuck_after", "30d"), "--stuck-after")
    try:
        with opened(settings_for(options.get("data_dir"))) as store:
            journey = get_journey(store, options.get("journey"))
            rows = stuck_contacts(store, journey, stage, stuck, limit)
    except StageError as exc:
        raise fail(str(exc), code=2) from None
    emit(rows, _format(options.get("fmt", "table")), title=f"stuck in {stage}")


def period_note(store: Any, start: datetime, end: datetime) -> str | None:
    """When ``[start, end)`` holds no event: what the store does hold, and how to ask for it."""
    with store.session() as s:
        if s.rows("SELECT 1 FROM events WHERE timestamp >= ? AND timestamp < ? LIMIT 1", [start, end]):
            return None
        first, last = s.rows("SELECT min(timestamp), max(timestamp) FROM events")[0]
    if first is None:
        return "the store holds no events yet: send some, or `percorso import FILE`"
    return (
        f"no events between {start.date()} and {(end - timedelta(microseconds=1)).date()}; the store holds "
        f"events from {first.date()} to {last.date()}: try --from {first.date()} --to {last.date()}"
    )


def painpoints_command(
    journey: Annotated[str | None, typer.Option(help="Journey key (default: the only one stored)")] = None,
    since: Annotated[
        str | None, typer.Option("--from", help="Period start (YYYY-MM-DD); default 182 days before today")
    ] = None,
    until: Annotated[
        str | None, typer.Option("--to", help="Last day, included (YYYY-MM-DD); default today")
    ] = None,
    dimension: Annotated[
        list[str] | None,
        typer.Option(
            "--dimension",
            "-d",
            help="Segments to compare: platform, channel, campaign, property:KEY, trait:KEY "
            "(default: the fields of the funnels' events with a few values each, found in the data)",
        ),
    ] = None,
    min_z: Annotated[float, typer.Option(help="Significance threshold (z score, one-sided)")] = 4.0,
    min_effect: Annotated[
        float, typer.Option(help="Smallest difference in conversion worth reporting (0-1)")
    ] = 0.05,
    fdr: Annotated[
        float, typer.Option(help="False discovery rate held over every place tested (Benjamini-Hochberg)")
    ] = 0.05,
    lang: Annotated[str, typer.Option(help="Funnel names and summaries in en or it")] = "en",
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Embedded store directory")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, csv or json")] = "table",
) -> None:
    """Where customers are lost or struggle, found automatically, ranked by impact (money at stake, conversions lost, contacts)."""
    from percorso.analytics.funnel import FunnelError
    from percorso.analytics.painpoints import Settings, find_pain_points
    from percorso.analytics.stages import StageError, get_journey
    from percorso.cli.shared import console, emit, err, fail, opened, settings_for

    output = _format(fmt)
    now = datetime.now(UTC)
    start, end = _period(since, until)
    if not 0 < min_effect < 1:
        raise typer.BadParameter("between 0 and 1", param_hint="--min-effect")
    if lang not in ("en", "it"):
        raise typer.BadParameter("en or it", param_hint="--lang")
    if not 0 < fdr < 1:
        raise typer.BadParameter("between 0 and 1", param_hint="--fdr")
    cfg = Settings(
        min_z=min_z, min_effect=min_effect, fdr=fdr, dimensions=tuple(dimension) if dimension else None
    )
    try:
        with opened(settings_for(data_dir)) as store:
            chosen = get_journey(store, journey)
            note = period_note(store, start, end)
            result = find_pain_points(
                store, chosen, start=start, end=end, as_of=min(now, end), settings=cfg, lang=lang
            )
    except (StageError, FunnelError) as exc:
        raise fail(str(exc), code=2) from None
    if fmt == "json":
        sys.stdout.write(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        return
    rows = [
        {
            "#": p["rank"],
            "kind": p["kind"],
            "where": f"{p['funnel_name']}: {p['step']}",
            "segment": p["segment_label"] or "",
            "when": f"{p['when']['start']} → {p['when']['end']}" if p["when"] else "all period",
            "contacts": p["contacts_affected"],
            "z": p["z"],
            "evidence": p["summary"],
        }
        for p in result["pain_points"]
    ]
    emit(rows, output, title=f"pain points in {chosen.key}, {start.date()} → {end.date()}")
    if note:  # on standard error: csv and json on standard output stay data
        err.print(f"[yellow]{note}[/]", soft_wrap=True)
    for said in result["notes"]:
        err.print(said["summary"], style="yellow", soft_wrap=True, markup=False)
    if fmt == "table":
        compared = sorted({d for dims in result["dimensions"].values() for d in dims})
        console.print(
            f"[dim]contacts = contacts affected beyond the baseline (visits, for a dated dip); "
            f"z = significance (reported from {min_z}); segments compared: "
            f"{', '.join(compared) or 'none'}{'' if dimension else ' (found in the data; -d to choose)'}; "
            "--format json for the full evidence[/]"
        )


def map_command(
    journey: Annotated[str | None, typer.Option(help="Journey key (default: the only one stored)")] = None,
    persona: Annotated[str | None, typer.Option(help="Only the contacts of this persona")] = None,
    since: Annotated[
        str | None, typer.Option("--from", help="Period start (YYYY-MM-DD); default 182 days before today")
    ] = None,
    until: Annotated[
        str | None, typer.Option("--to", help="Last day, included (YYYY-MM-DD); default today")
    ] = None,
    lang: Annotated[str, typer.Option(help="Names in en or it")] = "en",
    pain_points: Annotated[bool, typer.Option(help="Include the pain points (slower)")] = True,
    dimension: Annotated[
        list[str] | None,
        typer.Option(
            "--dimension",
            "-d",
            help="Segments the pain points compare, as in `percorso painpoints -d` (default: found in the data)",
        ),
    ] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Embedded store directory")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, csv or json")] = "table",
) -> None:
    """The customer journey map from live data: per stage, contacts, conversion, time, actions,
    channels, emotion, pain points and KPIs."""
    from percorso.analytics.funnel import FunnelError
    from percorso.analytics.journeymap import journey_map
    from percorso.analytics.personas import PersonaError
    from percorso.analytics.stages import StageError, get_journey
    from percorso.cli.shared import console, emit, err, fail, opened, settings_for

    output = _format(fmt)
    if lang not in ("en", "it"):
        raise typer.BadParameter("en or it", param_hint="--lang")
    start, end = _period(since, until)
    if start >= end:
        raise typer.BadParameter("must be before --to", param_hint="--from")
    try:
        with opened(settings_for(data_dir)) as store:
            chosen = get_journey(store, journey)
            note = period_note(store, start, end)
            result = journey_map(
                store,
                chosen,
                persona=persona,
                start=start,
                end=end,
                lang=lang,
                with_pain_points=pain_points,
                dimensions=tuple(dimension) if dimension else None,
            )
    except (StageError, PersonaError, FunnelError) as exc:
        raise fail(str(exc), code=2) from None
    if fmt == "json":
        sys.stdout.write(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        return
    rows = []
    for s in result["stages"]:
        emotion = s["emotion"]
        rows.append(
            {
                "stage": s["name"],
                "entered": s["contacts"]["entered"],
                "now": s["contacts"]["now"],
                "to next": _pct(s["conversion_to_next"]),
                "time": _human(s["time_in_stage"]["median_seconds"]),
                "top action": s["top_actions"][0]["action"] if s["top_actions"] else "",
                "channels": ", ".join(f"{c['channel']} {c['share']:.0%}" for c in s["channels"][:3]),
                "emotion": ""
                if emotion["score"] is None
                else f"{emotion['score']:+.2f} ({emotion['evidence']})",
                "pain points": len(s["pain_points"]),
            }
        )
    who = f", persona {result['persona']['name']}" if result["persona"] else ""
    emit(rows, output, title=f"{result['name']}{who}: {start.date()} → {end.date()}")
    if note:  # on standard error: csv and json on standard output stay data
        err.print(f"[yellow]{note}[/]", soft_wrap=True)
    if fmt == "table":
        for s in result["stages"]:
            for p in s["pain_points"]:
                console.print(f"  [bold]{s['name']}[/]: {p['summary']}", soft_wrap=True)
        for p in result["unplaced_pain_points"]:
            console.print(f"  (no stage): {p['summary']}", soft_wrap=True)


def paths_command(
    from_step: Annotated[
        str | None, typer.Option("--from-step", help="Start at this step (event name or pattern)")
    ] = None,
    to_step: Annotated[str | None, typer.Option("--to-step", help="End at this step")] = None,
    since: Annotated[
        str | None, typer.Option("--from", help="First day (YYYY-MM-DD); default 182 days before today")
    ] = None,
    until: Annotated[
        str | None, typer.Option("--to", help="Last day, included (YYYY-MM-DD); default today")
    ] = None,
    max_steps: Annotated[int, typer.Option(help="Steps per path")] = 5,
    top: Annotated[
        int,
        typer.Option(
            help="At most this many links: each step keeps its busiest nodes, the rest fold into (other)"
        ),
    ] = 150,
    session_gap: Annotated[str, typer.Option(help="A gap longer than this starts a new session")] = "30m",
    collapse: Annotated[bool, typer.Option(help="Merge consecutive repeats of the same step")] = True,
    url_rule: Annotated[
        list[str] | None,
        typer.Option(
            "--url-rule", help="REGEX=>REPLACEMENT applied to page paths, e.g. '^/p/[0-9]+$=>/p/:id'"
        ),
    ] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Embedded store directory")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, csv or json")] = "table",
) -> None:
    """The paths contacts take within a session, ready for a Sankey chart."""
    from percorso.analytics.funnel import FunnelError, parse_step
    from percorso.analytics.paths import PathError, PathSpec, paths
    from percorso.cli.shared import emit, fail, opened, settings_for

    output = _format(fmt)
    rules = []
    for rule in url_rule or []:
        pattern, sep, replacement = rule.partition("=>")
        if not sep:
            raise typer.BadParameter(f"{rule!r}: write REGEX=>REPLACEMENT", param_hint="--url-rule")
        rules.append((pattern, replacement))
    start, end = _period(since, until)
    try:
        spec = PathSpec(
            start=start,
            end=end,
            from_step=parse_step(from_step).condition if from_step else None,
            to_step=parse_step(to_step).condition if to_step else None,
            max_steps=max_steps,
            top_edges=top,
            session_gap_seconds=int(_duration(session_gap, "--session-gap").total_seconds()),
            collapse_repeats=collapse,
            url_rules=rules,
        )
        spec.check()
        with opened(settings_for(data_dir)) as store:
            result = paths(store, spec)
    except (PathError, FunnelError) as exc:
        raise fail(str(exc), code=2) from None
    if fmt == "json":
        sys.stdout.write(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        return
    rows = [
        {
            "from": link["source"],
            "to": link["target"],
            "transitions": link["transitions"],
            "contacts": link["contacts"],
        }
        for link in result["links"]
    ]
    emit(
        rows,
        output,
        title=f"paths ({result['mode']}): {result['sessions']} sessions, {result['contacts']} contacts",
    )


def attribution_command(
    conversion: Annotated[
        str,
        typer.Option("--conversion", "-c", help="The conversion, as a funnel step (event name or pattern)"),
    ] = "Order Completed",
    by: Annotated[str, typer.Option(help="channel, campaign, source or medium")] = "channel",
    since: Annotated[
        str | None, typer.Option("--from", help="First day (YYYY-MM-DD); default 182 days before today")
    ] = None,
    until: Annotated[
        str | None, typer.Option("--to", help="Last day, included (YYYY-MM-DD); default today")
    ] = None,
    lookback: Annotated[str, typer.Option(help="Touches this long before a conversion count")] = "30d",
    half_life: Annotated[str, typer.Option("--half-life", help="The time-decay model's half-life")] = "7d",
    visit_gap: Annotated[str, typer.Option("--visit-gap", help="A pause this long ends a visit")] = "30m",
    revenue: Annotated[bool, typer.Option(help="Credit revenue instead of conversions")] = False,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Embedded store directory")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, csv or json")] = "table",
) -> None:
    """Which channels or campaigns earn the conversions, by every attribution model."""
    from percorso.analytics.attribution import MODELS, AttributionError, AttributionSpec, attribution
    from percorso.analytics.funnel import FunnelError, parse_step
    from percorso.cli.shared import console, emit, fail, opened, settings_for

    output = _format(fmt)
    start, end = _period(since, until)
    try:
        spec = AttributionSpec(
            conversion=parse_step(conversion).condition,
            start=start,
            end=end,
            by=by,
            lookback_seconds=int(_duration(lookback, "--lookback").total_seconds()),
            half_life_seconds=int(_duration(half_life, "--half-life").total_seconds()),
            visit_gap=int(_duration(visit_gap, "--visit-gap").total_seconds()),
        )
        spec.check()
        with opened(settings_for(data_dir)) as store:
            result = attribution(store, spec)
    except (AttributionError, FunnelError) as exc:
        raise fail(str(exc), code=2) from None
    if fmt == "json":
        sys.stdout.write(
            json.dumps({"conversion": conversion, **result}, indent=2, ensure_ascii=False) + "\n"
        )
        return
    of = "revenue" if revenue else "conversions"
    if revenue and result["revenue"] is None:
        raise fail(f"the conversions ({conversion}) carry no revenue property", code=2)
    rows = [
        {by: row["value"], "touches": row["touches"], **{m: round(row[of][m], 2) for m in MODELS}}
        for row in result["values"]
    ]
    emit(
        rows,
        output,
        title=f"{conversion}: {result['conversions']} conversions credited by {by} ({of}), "
        f"{start.date()} → {(end - timedelta(seconds=1)).date()}, lookback {lookback}",
    )
    if fmt == "table":
        console.print(
            f"[dim]{result['touches_per_conversion'] or 0} touches per conversion; "
            f"{result['paths_not_converting']} paths did not convert (they weigh in the Markov model)[/]"
        )


def transitions_command(
    since: Annotated[
        str | None, typer.Option("--from", help="First day (YYYY-MM-DD); default 182 days before today")
    ] = None,
    until: Annotated[
        str | None, typer.Option("--to", help="Last day, included (YYYY-MM-DD); default today")
    ] = None,
    top: Annotated[int, typer.Option(help="Transitions shown, most frequent first")] = 50,
    session_gap: Annotated[str, typer.Option(help="A gap longer than this starts a new session")] = "30m",
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Embedded store directory")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, csv or json")] = "table",
) -> None:
    """The transition graph: how often each step follows another, with probability and median time."""
    from percorso.analytics.paths import PathError, transitions
    from percorso.cli.shared import emit, fail, opened, settings_for

    output = _format(fmt)
    start, end = _period(since, until)
    try:
        with opened(settings_for(data_dir)) as store:
            rows = transitions(
                store,
                start,
                end,
                top=top,
                session_gap_seconds=int(_duration(session_gap, "--session-gap").total_seconds()),
            )
    except PathError as exc:
        raise fail(str(exc), code=2) from None
    if fmt == "table":
        rows = [
            {**r, "probability": _pct(r["probability"]), "median_seconds": _human(r["median_seconds"])}
            for r in rows
        ]
    emit(rows, output, title="transitions")


def retention_command(
    start_event: Annotated[
        str | None,
        typer.Option(
            "--start-event",
            help="The event that puts a contact in a cohort (its first occurrence ever), e.g. "
            "'Order Completed' for first purchase; default: any event (first seen)",
        ),
    ] = None,
    return_event: Annotated[
        str | None,
        typer.Option("--return-event", help="The event that counts as coming back; default: any event"),
    ] = None,
    period: Annotated[str, typer.Option(help="day, week (from Monday) or month, in UTC")] = "week",
    periods: Annotated[int, typer.Option(help="Later periods shown after the cohort's own")] = 8,
    since: Annotated[
        str | None,
        typer.Option("--from", help="First cohort (YYYY-MM-DD); default 30 days, 12 weeks or 12 months ago"),
    ] = None,
    until: Annotated[
        str | None, typer.Option("--to", help="End of the last cohort (YYYY-MM-DD); default now")
    ] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Embedded store directory")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, csv or json")] = "table",
) -> None:
    """Retention cohorts: of the contacts who started in each period, the share who came back in
    each later period (counted after identity resolution)."""
    from percorso.analytics.funnel import FunnelError, parse_step
    from percorso.analytics.retention import RetentionError, RetentionSpec, default_range, retention
    from percorso.cli.shared import console, emit, fail, opened, settings_for

    output = _format(fmt)
    default_start, default_end = default_range(period)
    end = _parse_day(until, "--to") if until else default_end
    start = _parse_day(since, "--from") if since else default_start
    try:
        spec = RetentionSpec(
            start=start,
            end=end,
            period=period,
            periods=periods,
            start_event=parse_step(start_event) if start_event else None,
            return_event=parse_step(return_event) if return_event else None,
        )
        spec.check()
        with opened(settings_for(data_dir)) as store:
            result = retention(store, spec)
    except (RetentionError, FunnelError) as exc:
        raise fail(str(exc), code=2) from None
    if fmt == "json":
        sys.stdout.write(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        return
    if fmt == "csv":  # long form: one row per cohort and period
        emit(
            [
                {
                    "cohort": c["cohort"],
                    "contacts": c["contacts"],
                    "period": n,
                    "returned": c["returned"][n],
                    "retention": c["retention"][n],
                }
                for c in result["cohorts"]
                for n in range(result["periods"] + 1)
                if c["returned"][n] is not None
            ],
            output,
        )
        return
    rows = [
        {
            "cohort": c["cohort"],
            "contacts": c["contacts"],
            **{f"+{n}" if n else "0": _pct(r) for n, r in enumerate(c["retention"])},
        }
        for c in result["cohorts"]
    ]
    rows.append(
        {
            "cohort": "average",
            "contacts": "",
            **{f"+{a['period']}" if a["period"] else "0": _pct(a["retention"]) for a in result["average"]},
        }
    )
    started = result["start_event"] or "first seen"
    returned = result["return_event"] or "any event"
    emit(rows, output, title=f"retention by {period}: cohort = {started}, return = {returned}")
    console.print(f"[dim]{result['counting']}[/]")
