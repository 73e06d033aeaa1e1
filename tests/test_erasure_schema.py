"""Erasure against the schema itself: every table that has a column naming a contact or one of
its identifiers (read from information_schema at test time, on both stores) gets a row pointing at
the contact being erased, under its surviving id and under the id of a contact merged into it; after
the erasure no such row is left anywhere. A table added later that erasure forgets fails here,
unless it is listed below with the reason it keeps such a column."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from percorso.events import parse_message
from percorso.store import Store
from percorso.store.contacts import erase_contact

#: Columns that name a contact or an identifier of one.
CONTACT = ("contact_id", "other_contact_id")
IDENTIFYING = (*CONTACT, "identity_id", "message_id", "anonymous_id", "user_id", "email")

#: Tables that keep such a column on purpose.
KEPT = {
    "erasures": "the count-only record of an erasure: the erased id, and how many rows went",
    "users": "dashboard users (the team), not contacts",
    "web_sessions": "dashboard sessions of the team",
}
#: Filled by ingestion below (the real path), not by a generic row.
INGESTED = {"contacts", "identities", "events"}


def columns(store: Store) -> dict[str, list[tuple[str, str, bool]]]:
    with store.session() as s:
        rows = s.rows(
            "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns "
            "WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"
        )
    out: dict[str, list[tuple[str, str, bool]]] = {}
    for table, column, kind, nullable in rows:
        out.setdefault(str(table), []).append((str(column), str(kind).lower(), nullable == "YES"))
    return out


def filler(kind: str, n: int) -> Any:
    if "int" in kind or kind in ("numeric", "double", "double precision", "real"):
        return 900_000 + n
    if "timestamp" in kind or kind == "date":
        return datetime(2026, 1, 1, tzinfo=UTC)
    if kind == "boolean":
        return False
    if kind in ("json", "jsonb"):
        return "{}"
    return f"erasure-test-{n}"


def test_erasure_leaves_no_row_naming_the_contact_in_any_table(store: Store, classifier: Any) -> None:
    messages = [
        {"type": "page", "anonymousId": "browser-1", "name": "Home"},
        {
            "type": "identify",
            "anonymousId": "browser-1",
            "userId": "victim",
            "traits": {"email": "victim@example.it"},
        },
        {"type": "page", "anonymousId": "browser-2", "name": "Home"},
        {"type": "alias", "previousId": "browser-2", "userId": "victim"},  # browser-2's contact merges in
        {"type": "identify", "userId": "bystander", "traits": {"email": "other@example.it"}},
    ]
    for batch in (messages[:3], messages[3:]):  # the alias merges two stored contacts
        store.ingest(
            [
                parse_message(
                    json.dumps({**m, "messageId": str(uuid.uuid4())}).encode(),
                    received_at=datetime.now(UTC),
                    classifier=classifier,
                )
                for m in batch
            ]
        )
    with store.session() as s:
        live = int(
            s.rows("SELECT contact_id FROM identities WHERE kind = 'user_id' AND value = 'victim'")[0][0]
        )
        merged = [int(r[0]) for r in s.rows("SELECT contact_id FROM contacts WHERE merged_into = ?", [live])]
        identity = int(
            s.rows("SELECT identity_id FROM identities WHERE contact_id = ? LIMIT 1", [live])[0][0]
        )
        event = str(
            s.rows(
                "SELECT message_id FROM events WHERE identity_id IN "
                "(SELECT identity_id FROM identities WHERE contact_id = ?) LIMIT 1",
                [live],
            )[0][0]
        )
    assert merged, "the alias merged a contact into the victim"
    values = {
        "identity_id": identity,
        "message_id": event,
        "anonymous_id": "browser-1",
        "user_id": "victim",
        "email": "victim@example.it",
    }
    schema = columns(store)
    touched = {t: cols for t, cols in schema.items() if any(c[0] in IDENTIFYING for c in cols)}
    assert {"events", "identities", "contacts", "stage_entries", "enrollments", "outbox"} <= set(touched)
    filled = []
    with store.writing() as s:
        for table, cols in touched.items():
            if table in KEPT or table in INGESTED:
                continue
            for r, who in enumerate((live, merged[0])):
                names = [c[0] for c in cols]
                row = [
                    who if name in CONTACT else values.get(name, filler(kind, 100 * r + n))
                    for n, (name, kind, _) in enumerate(cols)
                ]
                placeholders = ", ".join(
                    f"CAST(? AS {s.json_type})" if kind in ("json", "jsonb") else "?" for _, kind, _ in cols
                )
                s.execute(f"INSERT INTO {table} ({', '.join(names)}) VALUES ({placeholders})", row)
                if not any(name in CONTACT for name in names):
                    break  # identifier columns only: one row
            filled.append(table)
    erase_contact(store, live)

    left = {}
    with store.session() as s:
        for table, cols in touched.items():
            if table in KEPT:
                continue
            tests, params = [], []
            for name, _, _ in cols:
                if name in CONTACT:
                    tests.append(f"{name} IN (?, ?)")
                    params += [live, merged[0]]
                elif name in values:
                    tests.append(f"{name} = ?")
                    params.append(values[name])
            n = s.rows(f"SELECT count(*) FROM {table} WHERE {' OR '.join(tests)}", params)[0][0]
            if n:
                left[table] = int(n)
        bystander = s.rows(
            "SELECT count(*) FROM identities WHERE value IN ('bystander', 'other@example.it')"
        )[0][0]
    assert left == {}, f"rows naming the erased contact remain in {left} (tables filled: {filled})"
    assert bystander == 2  # nobody else was touched
