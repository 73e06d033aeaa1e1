"""``percorso import FILE``: offline touchpoints from CSV, JSONL or Parquet."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Annotated, Any

import typer

from percorso.channels import ChannelClassifier, ChannelRulesError, load_rules
from percorso.collect.loader import LoadReport, Rejection, load_messages
from percorso.events import Limits

#: Exit status when the import finished but skipped bad rows (0: everything stored).
EXIT_ROWS_SKIPPED = 3


def _pairs(path: Path, mapping: Any) -> Iterator[tuple[Any, dict[str, Any] | Rejection]]:
    from percorso.imports import Row, read_rows

    for item in read_rows(path, mapping):
        if isinstance(item, Row):
            yield item.line, item.message
        else:
            yield item.line, Rejection(item.line, "", item.message)


def import_file(
    file: Annotated[
        Path,
        typer.Argument(
            help="A .csv/.tsv, .jsonl/.ndjson or .parquet file", exists=True, dir_okay=False, readable=True
        ),
    ],
    mapping: Annotated[Path | None, typer.Option(help="YAML column mapping (see docs/import.md)")] = None,
    call: Annotated[
        str, typer.Option("--type", help="Segment call for every row: track, identify, page, group")
    ] = "track",
    event: Annotated[str | None, typer.Option(help="Event name for every row, e.g. 'Store Visit'")] = None,
    channel: Annotated[
        str | None, typer.Option(help="Touchpoint channel, e.g. store, call-center, support")
    ] = None,
    map_: Annotated[
        list[str] | None, typer.Option("--map", help="target=column, e.g. userId=customer_id; repeatable")
    ] = None,
    timestamp_format: Annotated[
        str | None, typer.Option(help="strptime format, e.g. '%d/%m/%Y %H:%M'")
    ] = None,
    timezone: Annotated[str, typer.Option(help="Time zone of timestamps without one")] = "UTC",
    strict: Annotated[bool, typer.Option(help="Check every row first; write nothing if any is bad")] = False,
    url: Annotated[
        str | None, typer.Option(help="Send to a running server instead of opening the store")
    ] = None,
    key: Annotated[
        str | None, typer.Option(help="Write or secret key for --url", envvar="PERCORSO_KEY")
    ] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Embedded store directory")] = None,
    show_errors: Annotated[int, typer.Option(help="How many bad rows to list")] = 20,
) -> None:
    """Import offline touchpoints (store visits, calls, purchases…). Re-importing a file adds nothing."""
    from percorso.cli.shared import console, fail, opened, progress_bar, settings_for
    from percorso.imports import ImportFileError, ImportMapping, count_rows

    try:
        if mapping is not None:
            spec = ImportMapping.from_yaml(mapping)
        else:
            spec = ImportMapping.from_options(
                type=call,
                event=event,
                channel=channel,
                maps=map_ or [],
                timestamp_format=timestamp_format,
                timezone=timezone,
            )
        total = count_rows(file)
        settings = settings_for(data_dir)
        classifier = ChannelClassifier(load_rules(settings.channels_file or None))
    except (ImportFileError, ChannelRulesError, ValueError) as exc:
        raise fail(str(exc)) from None
    limits = Limits.from_settings(settings)

    def run(store: Any, label: str) -> LoadReport:
        with progress_bar() as progress:
            task = progress.add_task(label, total=total)
            try:
                if url:
                    return _send(url, key, _pairs(file, spec), lambda n: progress.advance(task, n))
                report = load_messages(
                    store,
                    _pairs(file, spec),
                    classifier=classifier,
                    limits=limits,
                    progress=lambda n: progress.advance(task, n),
                )
                if store is not None and report.stored:
                    store.analyze()
                return report
            except ImportFileError as exc:
                raise fail(str(exc)) from None

    if strict:
        check = run(None, "checking")
        if check.rejected:
            _print_rejections(check, show_errors)
            raise fail(f"{len(check.rejected)} bad rows; --strict: nothing was written")
    if url:
        report = run(None, f"sending to {url}")
    else:
        with opened(settings) as store:
            report = run(store, "importing")
    console.print(
        f"{file.name}: {report.received} rows, {report.stored} stored, "
        f"{report.duplicates} already present, {len(report.rejected)} skipped"
    )
    if report.rejected:
        _print_rejections(report, show_errors)
        raise typer.Exit(EXIT_ROWS_SKIPPED)


def _print_rejections(report: LoadReport, limit: int) -> None:
    from percorso.cli.shared import err

    for item in report.rejected[:limit]:
        err.print(f"  line {item.ref}: {item}")
    if len(report.rejected) > limit:
        err.print(f"  … and {len(report.rejected) - limit} more")


def _send(
    url: str, key: str | None, pairs: Iterator[tuple[Any, Any]], advance: Any, size: int = 2000
) -> LoadReport:
    """Posts rows to a running server's /v1/import, mapping its per-message rejections to lines."""
    import httpx

    from percorso.cli.shared import fail

    if not key:
        raise fail("--url needs --key (or PERCORSO_KEY): a write or secret key of that server")
    report = LoadReport()
    with httpx.Client(base_url=url.rstrip("/"), auth=(key, ""), timeout=60) as client:
        while chunk := list(islice(pairs, size)):
            report.received += len(chunk)
            batch = [(ref, m) for ref, m in chunk if not isinstance(m, Rejection)]
            report.rejected += [m for _, m in chunk if isinstance(m, Rejection)]
            if batch:
                try:
                    response = client.post("/v1/import", json={"batch": [m for _, m in batch]})
                except httpx.HTTPError as exc:
                    raise fail(f"cannot reach {url}: {exc}") from None
                body = (
                    response.json()
                    if response.headers.get("content-type", "").startswith("application/json")
                    else {}
                )
                if response.status_code >= 500 or response.status_code in (401, 403, 413):
                    raise fail(
                        f"{url} answered {response.status_code}: {body.get('message', response.text[:200])}"
                    )
                for item in body.get("rejected", []):
                    report.rejected.append(Rejection(batch[item["index"]][0], item["field"], item["reason"]))
                report.stored += body.get("stored", 0)
                report.duplicates += body.get("duplicates", 0)
            advance(len(chunk))
    report.rejected.sort(key=lambda r: r.ref)
    return report


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: percorso import FILE")
