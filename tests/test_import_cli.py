"""``percorso import``: real files through the ingestion path, on both engines."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from typer.testing import CliRunner

from percorso.cli import app
from percorso.cli.imports import EXIT_ROWS_SKIPPED
from percorso.store import open_store
from percorso.store.contacts import contact_profile, contact_timeline, find_contact

runner = CliRunner()

VISITS = """customer_id,email,visited_at,store,amount
c-1,Anna@Example.it,2026-03-02 10:15,MI-01,42.50
c-2,bruno@example.it,2026-03-02 11:00,RM-02,0
c-1,anna@example.it,2026-03-09 17:40,MI-01,13
c-3,,not a date,TO-01,5
,,2026-03-10 09:00,TO-01,5
"""


def env_for(settings) -> dict[str, str]:
    env = {"PERCORSO_DATA_DIR": str(settings.data_dir)}
    if settings.database_url:
        env["PERCORSO_DATABASE_URL"] = settings.database_url
    return env


def import_visits(path: Path, env: dict[str, str], *extra: str):
    return runner.invoke(
        app,
        [
            "import",
            str(path),
            "--event",
            "Store Visit",
            "--channel",
            "store",
            "--map",
            "userId=customer_id",
            "--map",
            "email=email",
            "--map",
            "timestamp=visited_at",
            "--timezone",
            "Europe/Rome",
            *extra,
        ],
        env=env,
    )


def test_csv_import_reports_bad_rows_and_reimport_adds_nothing(store, settings, tmp_path):
    store.close()  # the command opens the store itself (DuckDB allows one owner)
    path = tmp_path / "visits.csv"
    path.write_text(VISITS)
    env = env_for(settings)
    first = import_visits(path, env)
    assert first.exit_code == EXIT_ROWS_SKIPPED, first.output
    assert "5 rows, 3 stored, 0 already present, 2 skipped" in first.output
    assert "line 5:" in first.output and "not a date" in first.output
    assert "line 6:" in first.output

    again = import_visits(path, env)
    assert "5 rows, 0 stored, 3 already present, 2 skipped" in again.output

    s = open_store(settings)
    try:
        anna = find_contact(s, "email", "anna@example.it")
        profile = contact_profile(s, anna)
        assert profile["channels"] == {"store": 2}
        events = contact_timeline(s, anna)["events"]
        # 10:15 in Rome (CET, UTC+1) is 09:15 UTC.
        assert events[-1]["timestamp"].startswith("2026-03-02T09:15:00")
        assert events[-1]["properties"]["store"] == "MI-01"
        assert s.counts()["events"] == 3
    finally:
        s.close()


def test_strict_writes_nothing_when_a_row_is_bad(store, settings, tmp_path):
    store.close()
    path = tmp_path / "visits.csv"
    path.write_text(VISITS)
    result = import_visits(path, env_for(settings), "--strict")
    assert result.exit_code == 1 and "nothing was written" in result.output
    s = open_store(settings)
    assert s.counts()["events"] == 0
    s.close()


def test_jsonl_and_parquet_with_a_mapping_file(store, settings, tmp_path):
    store.close()
    calls = tmp_path / "calls.jsonl"
    calls.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {
                    "id": "k1",
                    "user": "c-9",
                    "at": "2026-02-01T08:00:00Z",
                    "reason": "billing",
                    "seconds": 240,
                },
                {
                    "id": "k2",
                    "user": "c-9",
                    "at": "2026-02-03T08:00:00Z",
                    "reason": "delivery",
                    "seconds": 90,
                },
            ]
        )
        + "\n[1, 2]\n"
    )
    mapping = tmp_path / "calls.yaml"
    mapping.write_text(
        "event: Call Completed\nchannel: call-center\ncolumns:\n  messageId: id\n  userId: user\n"
        "  timestamp: at\n"
    )
    env = env_for(settings)
    result = runner.invoke(app, ["import", str(calls), "--mapping", str(mapping)], env=env)
    assert result.exit_code == EXIT_ROWS_SKIPPED and "line 3:" in result.output
    orders = tmp_path / "orders.parquet"
    pq.write_table(
        pa.table(
            {
                "customer": ["c-9", "c-8"],
                "ts": pa.array([1767225600_000000, 1767312000_000000], pa.timestamp("us", tz="UTC")),
                "revenue": [99.0, 12.5],
            }
        ),
        orders,
    )
    result = runner.invoke(
        app,
        [
            "import",
            str(orders),
            "--event",
            "Order Completed",
            "--channel",
            "store",
            "--map",
            "userId=customer",
            "--map",
            "timestamp=ts",
        ],
        env=env,
    )
    assert result.exit_code == 0, result.output
    s = open_store(settings)
    try:
        profile = contact_profile(s, find_contact(s, "user_id", "c-9"))
        assert profile["channels"] == {"call-center": 2, "store": 1}
    finally:
        s.close()


def test_mapping_errors_are_clear(tmp_path):
    path = tmp_path / "visits.csv"
    path.write_text(VISITS)
    result = runner.invoke(
        app,
        ["import", str(path), "--event", "Store Visit", "--map", "userId=client"],
        env={"PERCORSO_DATA_DIR": str(tmp_path)},
    )
    assert result.exit_code == 1 and "client" in result.output and "customer_id" in result.output
    other = tmp_path / "visits.xlsx"
    other.write_text("x")
    result = runner.invoke(app, ["import", str(other)], env={"PERCORSO_DATA_DIR": str(tmp_path)})
    assert result.exit_code == 1 and ".xlsx" in result.output


def test_import_to_a_running_server(server, tmp_path):
    path = tmp_path / "visits.csv"
    path.write_text(VISITS)
    result = import_visits(path, {}, "--url", server.url, "--key", server.write_key)
    assert result.exit_code == EXIT_ROWS_SKIPPED, result.output
    assert "5 rows, 3 stored" in result.output and "line 5:" in result.output
    assert server.store.counts()["events"] == 3
