"""CSV/spreadsheet formula injection: an event name such as ``=HYPERLINK("http://x","y")`` sent to
the collector must reach every CSV percorso writes as text a spreadsheet will not run, while
numbers, negative ones included, stay numbers.

The CSV writers: the journey map export (``/map/export.csv``) and every CLI command's
``--format csv`` (one writer, ``percorso.cli.emit``). Both go through ``percorso.spreadsheet``.
"""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from percorso.analytics.stages import save_journey, update
from percorso.cli import app
from percorso.config import Settings
from percorso.journey import load_journey
from percorso.spreadsheet import safe_cell
from percorso.web.dashboard.users import add_user
from tests.conftest import LiveServer

FORMULA = '=HYPERLINK("http://x","y")'
JOURNEY = """\
version: 1
key: shop
name: Shop
stages:
  - {key: browse, name: Browse, enter: {any: [{type: page}]}}
  - {key: buy, name: Buy, enter: {any: [{event: Order Completed}]}}
"""
ADMIN = ("anna@example.it", "a long enough secret")


@pytest.mark.parametrize(
    ("value", "written"),
    [
        (FORMULA, "'" + FORMULA),
        ("+HYPERLINK(1)", "'+HYPERLINK(1)"),
        ("-2+3+cmd|' /C calc'!A0", "'-2+3+cmd|' /C calc'!A0"),
        ("@SUM(A1:A9)", "'@SUM(A1:A9)"),
        ("\t=1+1", "'\t=1+1"),
        ("\r=1+1", "'\r=1+1"),
        ("  =1+1", "'  =1+1"),  # some spreadsheets trim leading spaces on import
        ("＝1+1", "'＝1+1"),  # full-width equals sign
        ("-3", "-3"),
        ("+39", "+39"),
        ("-0.25", "-0.25"),
        ("-1.5e3", "-1.5e3"),
        (-3, -3),
        (-0.25, -0.25),
        (None, None),
        ("", ""),
        ("Order Completed", "Order Completed"),
        ("a=b", "a=b"),
        ("+39 06 1234 5678", "'+39 06 1234 5678"),
    ],
)
def test_a_cell_that_would_run_gets_a_quote_and_numbers_stay(value: Any, written: Any) -> None:
    assert safe_cell(value) == written


def _journey_with_a_formula_event(site: LiveServer) -> None:
    journey = load_journey(JOURNEY)
    save_journey(site.store, journey, "shop.yaml")
    when = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    batch: list[dict[str, Any]] = []
    for n, who in enumerate(("u1", "u2", "u3")):
        steps = [("page", None), ("track", FORMULA), ("track", FORMULA), ("track", "Order Completed")]
        steps += [("track", "-3"), ("track", "-3")]
        for i, (kind, event) in enumerate(steps):
            message: dict[str, Any] = {
                "type": kind,
                "userId": who,
                "messageId": f"m-{n}-{i}",
                "timestamp": (when + timedelta(minutes=i)).isoformat(),
            }
            if event:
                message["event"] = event
            else:
                message["properties"] = {"path": "/"}
            batch.append(message)
    r = httpx.post(f"{site.url}/v1/batch", json={"batch": batch}, auth=(site.write_key, ""), timeout=30)
    assert r.status_code == 200 and r.json()["stored"] == len(batch), r.text
    update(site.store, journey)


def _rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_the_map_export_neutralises_formulas_and_keeps_numbers(server: LiveServer) -> None:
    _journey_with_a_formula_event(server)
    add_user(server.store, *ADMIN, role="admin")
    client = httpx.Client(base_url=server.url, timeout=60)
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text)
    assert token
    form = {"email": ADMIN[0], "password": ADMIN[1], "csrf_token": token.group(1)}
    assert client.post("/login", data=form).status_code == 303
    exported = client.get("/map/export.csv")
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    rows = {r["stage"]: r for r in _rows(exported.text)}
    assert rows["browse"]["top_action"] == "'" + FORMULA
    assert rows["buy"]["top_action"] == "-3"  # a number-like name is left alone
    assert rows["browse"]["entered"] == "3"
    assert not any(cell.startswith(("=", "+", "@")) for r in rows.values() for cell in r.values())


def test_cli_csv_neutralises_formulas_and_keeps_numbers(server: LiveServer, settings: Settings) -> None:
    _journey_with_a_formula_event(server)
    env = {"PERCORSO_DATA_DIR": str(settings.data_dir), "PERCORSO_DATABASE_URL": settings.database_url}
    result = CliRunner().invoke(app, ["map", "--format", "csv", "--no-pain-points"], env=env)
    assert result.exit_code == 0, result.output
    rows = {r["stage"]: r for r in _rows(result.output)}
    assert rows["Browse"]["top action"] == "'" + FORMULA
    assert rows["Buy"]["top action"] == "-3"
    assert rows["Browse"]["entered"] == "3"
    paths = CliRunner().invoke(app, ["transitions", "--format", "csv"], env=env)
    assert paths.exit_code == 0, paths.output
    cells = [cell for row in csv.reader(io.StringIO(paths.output)) for cell in row]
    assert "'" + FORMULA in cells and FORMULA not in cells
    assert "-3" in cells
