"""An erased contact's bytes leave the store's files, not only its tables.

Every other contact's events, identifiers and traits carry random values; the erased contact's
carry one marker. Before the erasure the marker is in the files (so the search can find it);
after, it is in none of them: on PostgreSQL once the erasure returns (VACUUM of the tables it
deleted from, heap, TOAST and indexes); on DuckDB the write-ahead log is emptied at once and the
database file is rewritten at the next open, or at once where the command owns the file
(`percorso contacts erase`). Nothing else is lost, and the store keeps working.
"""

from __future__ import annotations

import json
import os
import secrets
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from percorso.cli import app
from percorso.config import Settings
from percorso.events import parse_message
from percorso.store import Store, open_store
from percorso.store.contacts import erase_contact
from percorso.store.duckdb import DuckDBStore


def populate(store: Store, classifier: Any, marker: str) -> int:
    messages: list[dict[str, Any]] = []
    for i in range(1500):
        note = secrets.token_hex(8)
        messages.append(
            {"type": "identify", "userId": f"u{i}", "traits": {"email": f"u{i}@example.com", "note": note}}
        )
        messages.append({"type": "track", "userId": f"u{i}", "event": "Viewed", "properties": {"q": note}})
    messages.insert(
        700, {"type": "identify", "userId": "victim", "traits": {"email": f"{marker}@example.com"}}
    )
    messages.insert(
        1900, {"type": "track", "userId": "victim", "event": "Viewed", "properties": {"q": marker}}
    )
    messages.insert(2100, {"type": "page", "anonymousId": "victim-browser", "name": marker})
    messages.insert(2200, {"type": "alias", "previousId": "victim-browser", "userId": "victim"})
    store.ingest(
        [
            parse_message(
                json.dumps({**m, "messageId": str(uuid.uuid4())}).encode(),
                received_at=datetime.now(UTC),
                classifier=classifier,
            )
            for m in messages
        ]
    )
    with store.session() as s:
        return int(
            s.rows("SELECT contact_id FROM identities WHERE kind = 'user_id' AND value = 'victim'")[0][0]
        )


def found_in(files: list[Path], marker: str) -> dict[str, int]:
    counts = {f.name: f.read_bytes().count(marker.encode()) for f in files if f.exists()}
    return {name: n for name, n in counts.items() if n}


def duckdb_files(store: DuckDBStore) -> list[Path]:
    return [store.path, store.path.with_name(store.path.name + ".wal")]


def postgres_files(store: Store) -> list[Path]:
    """Every heap, TOAST and index file of the store's tables, after a checkpoint wrote them."""
    with store.session() as s:
        s.execute("CHECKPOINT")
        directory = s.rows("SHOW data_directory")[0][0]
        paths = s.rows(
            "SELECT pg_relation_filepath(c.oid) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname IN ('public', 'pg_toast') AND c.relkind IN ('r', 'i', 't') "
            "AND pg_relation_filepath(c.oid) IS NOT NULL"
        )
    return [Path(directory, p) for (p,) in paths]


def files_of(store: Store) -> list[Path]:
    if isinstance(store, DuckDBStore):
        store.checkpoint()  # so what was written is in the file, not only in the log
        return duckdb_files(store)
    return postgres_files(store)


def test_the_erased_contact_leaves_the_files(store: Store, classifier: Any, settings: Settings) -> None:
    marker = "zq" + secrets.token_hex(12)
    victim = populate(store, classifier, marker)
    events = store.counts()["events"]
    assert found_in(files_of(store), marker), "the search must see the marker before the erasure"

    result = erase_contact(store, victim)
    # identify, track, page and alias; the user id, the email and the browser's anonymous id
    assert result["events"] == 4 and result["identities"] == 3
    assert store.counts()["events"] == events - 4

    if isinstance(store, DuckDBStore):
        # The log is empty at once; the file still holds deleted row groups until it is rewritten.
        wal = store.path.with_name(store.path.name + ".wal")
        assert not wal.exists() or marker.encode() not in wal.read_bytes()
        assert store.erasures_pending()
        before = store.path.stat().st_size
        report = store.compact()
        assert report["bytes_before"] == before and report["bytes_after"] == store.path.stat().st_size
        assert not store.erasures_pending()
    assert found_in(files_of(store), marker) == {}

    # Nothing else went, and the store goes on: new contacts get new ids.
    assert store.counts()["events"] == events - 4
    populate(store, classifier, "zq" + secrets.token_hex(12))
    with store.session() as s:
        assert (
            s.rows("SELECT count(DISTINCT contact_id) FROM identities WHERE kind = 'user_id'")[0][0] == 1501
        )
        ids = [r[0] for r in s.rows("SELECT contact_id FROM identities WHERE value = 'victim'")]
    assert len(ids) == 1 and ids[0] > victim


def test_a_server_erasure_leaves_the_duckdb_file_at_the_next_start(tmp_path: Path, classifier: Any) -> None:
    settings = Settings(data_dir=tmp_path)
    marker = "zq" + secrets.token_hex(12)
    running = open_store(settings)  # as `percorso serve` holds it
    assert isinstance(running, DuckDBStore)
    victim = populate(running, classifier, marker)
    erase_contact(running, victim)  # DELETE /v1/contacts/{id}
    running.close()
    assert found_in(duckdb_files(running), marker), "deleted row groups stay until the file is rewritten"

    restarted = open_store(settings)
    try:
        assert isinstance(restarted, DuckDBStore)
        assert found_in(duckdb_files(restarted), marker) == {}
        assert not restarted.erasures_pending()
        with restarted.session() as s:
            assert s.rows("SELECT count(*) FROM erasures")[0][0] == 1  # the count-only record stays
            assert s.rows("SELECT count(*) FROM contacts")[0][0] == 1500
    finally:
        restarted.close()
    size = restarted.path.stat().st_mtime_ns
    open_store(settings).close()  # nothing pending: the file is not rewritten again
    assert restarted.path.stat().st_mtime_ns == size


def test_the_erase_command_rewrites_the_file_at_once(tmp_path: Path, classifier: Any) -> None:
    settings = Settings(data_dir=tmp_path)
    marker = "zq" + secrets.token_hex(12)
    store = open_store(settings)
    assert isinstance(store, DuckDBStore)
    victim = populate(store, classifier, marker)
    store.close()
    result = CliRunner().invoke(
        app, ["contacts", "erase", str(victim), "--yes", "--data-dir", str(tmp_path)], env=dict(os.environ)
    )
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert f"erased contact {victim}: 4 events, 3 identifiers" in said
    assert "the database file was rewritten without them" in said
    assert found_in(duckdb_files(store), marker) == {}


def test_on_postgres_an_erasure_waits_for_the_snapshots_older_than_it(
    pg_url: str, tmp_path: Path, classifier: Any
) -> None:
    """A transaction that began before the erasure (a long report, an autovacuum ANALYZE on a busy
    machine) may still see the erased rows, and VACUUM cannot remove those: the erasure waits for
    it to end (here a second later), then vacuums, so the bytes are gone when it returns."""
    import threading
    import time

    import psycopg

    store = open_store(Settings(data_dir=tmp_path, database_url=pg_url, pool_size=4, automation_worker=False))
    try:
        store.reset()
        marker = "zq" + secrets.token_hex(12)
        victim = populate(store, classifier, marker)
        reader = psycopg.connect(pg_url)
        reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        assert reader.execute("SELECT count(*) FROM events").fetchone()[0] > 3000  # its snapshot is taken
        ended = threading.Timer(1.0, reader.rollback)
        ended.start()
        started = time.monotonic()
        erase_contact(store, victim)
        waited = time.monotonic() - started
        ended.join()
        reader.close()
        assert waited >= 0.9, waited  # it waited for the reader …
        assert found_in(files_of(store), marker) == {}  # … and then the rows could go
    finally:
        store.close()
