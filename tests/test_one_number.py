"""One number everywhere: on the demo, each figure that appears on several surfaces is the same
on all of them, in their default period and in a period given as days — the journey map page's
twin, the overview's twin, the HTTP API (stages and map) and the CLI (`percorso stages` and
`percorso map`, `--format json`), on both stores."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from typer.testing import CliRunner

from percorso.cli import app
from percorso.config import Settings
from percorso.demo.command import demo_journey
from percorso.demo.generator import DemoSpec
from percorso.web.dashboard.users import add_user
from tests.conftest import LiveServer, load_demo_events
from tests.test_dashboard import ADMIN, signed_in


@pytest.fixture
def demo(server: LiveServer) -> LiveServer:
    load_demo_events(server.store, DemoSpec(contacts=300, seed=11))
    demo_journey(server.store)
    add_user(server.store, ADMIN[0], ADMIN[1], role="admin", name="Anna")
    return server


def _cli(settings: Settings, *args: str) -> dict[str, Any]:
    env = {"PERCORSO_DATA_DIR": str(settings.data_dir), "PERCORSO_DATABASE_URL": settings.database_url or ""}
    result = CliRunner().invoke(app, [*args, "--format", "json"], env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _by_stage(rows: list[dict[str, Any]], entered: str, now: str) -> dict[str, tuple[int, int]]:
    return {r["stage"]: (_get(r, entered), _get(r, now)) for r in rows}


def _get(row: dict[str, Any], dotted: str) -> int:
    value: Any = row
    for part in dotted.split("."):
        value = value[part]
    return int(value)


@pytest.mark.parametrize("days", [None, ("2026-06-01", "2026-09-30")])
def test_stage_counts_agree_on_every_surface(demo: LiveServer, settings: Settings, days: Any) -> None:
    key = "customer-journey"
    page_query = f"?from={days[0]}&to={days[1]}" if days else ""
    cli_period = ["--from", days[0], "--to", days[1]] if days else []
    if days:  # the API takes instants: the dashboard's last day included is the next midnight
        end = datetime.fromisoformat(days[1]).replace(tzinfo=UTC) + timedelta(days=1)
        api_params = {"from": f"{days[0]}T00:00:00Z", "to": end.isoformat().replace("+00:00", "Z")}
    else:
        api_params = {}
    client = signed_in(demo)
    page_map = client.get(f"/map.json{page_query}").json()
    overview = client.get(f"/index.json{page_query}").json()
    client.close()
    api = demo.client()
    api_stages = api.get(f"/v1/journeys/{key}/stages", params=api_params).json()
    api_map = api.get(f"/v1/journeys/{key}/map", params={**api_params, "pain_points": "false"}).json()
    cli_stages = _cli(settings, "stages", *cli_period)
    cli_map = _cli(settings, "map", "--no-pain-points", *cli_period)

    surfaces = {
        "map page": _by_stage(page_map["map"]["stages"], "contacts.entered", "contacts.now"),
        "API map": _by_stage(api_map["stages"], "contacts.entered", "contacts.now"),
        "API stages": _by_stage(api_stages["stages"], "entered_in_period", "current_contacts"),
        "CLI map": _by_stage(cli_map["stages"], "contacts.entered", "contacts.now"),
        "CLI stages": _by_stage(cli_stages["stages"], "entered_in_period", "current_contacts"),
    }
    reference = surfaces["map page"]
    assert sum(entered for entered, _ in reference.values()) > 0
    assert {name: numbers for name, numbers in surfaces.items() if numbers != reference} == {}
    # The overview's stage distribution is the map's "now".
    assert {s["stage"]: s["contacts"] for s in overview["stage_distribution"]} == {
        stage: now for stage, (_, now) in reference.items()
    }
    # Each surface says which period it read, and it is the same one.
    first, last = page_map["filters"]["from"], page_map["filters"]["to"]
    if days:
        assert (first, last) == days
    after_last = (datetime.fromisoformat(last) + timedelta(days=1)).date().isoformat()
    for period in (api_stages["period"], cli_stages["period"]):
        assert (period["start"][:10], period["end"][:10]) == (first, after_last)
