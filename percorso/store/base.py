"""The store interface: one API over DuckDB (embedded) and PostgreSQL (production).

Features call :class:`Store` methods; SQL lives in this package only. Engine differences are
confined to the two :class:`Session` implementations (placeholders, bulk loading, sequences,
locks) — the SQL text itself is shared.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from percorso.events import Event
from percorso.store.migrations import MIGRATIONS

#: The PostgreSQL NOTIFY channel that wakes automation workers in other processes.
EVENTS_CHANNEL = "percorso_events"


class StoreError(RuntimeError):
    """The store cannot do what was asked (unreachable, locked, wrong schema)."""


class StoreUnavailable(StoreError):
    """The database cannot be reached or is busy; the caller may retry later."""


class DataRejected(StoreError):
    """The database refused a value; the message says which."""


class Session(ABC):
    """One connection inside one transaction. SQL uses ``?`` placeholders on every engine."""

    json_type: str = "JSON"

    @abstractmethod
    def execute(self, sql: str, params: Sequence[Any] = ()) -> None: ...

    @abstractmethod
    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...

    def dicts(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        rows = self.rows(sql, params)
        columns = self.last_columns()
        return [dict(zip(columns, row, strict=True)) for row in rows]

    @abstractmethod
    def last_columns(self) -> list[str]: ...

    @abstractmethod
    def json_text(self, column: str, key: str) -> tuple[str, Any]:
        """SQL for the text of ``column``'s top-level ``key`` (NULL when absent), and its parameter."""

    @abstractmethod
    def insert_events(self, events: list[Event]) -> set[str]:
        """Appends events, skipping message ids already stored; returns the ids inserted."""

    @abstractmethod
    def next_ids(self, sequence: str, count: int) -> list[int]: ...

    @abstractmethod
    def json_number(self, column: str, key: str) -> tuple[str, list[Any]]:
        """SQL for ``column``'s top-level ``key`` as a double when it is a number (else NULL)."""

    def json_columns(self, column: str, fields: dict[str, str]) -> tuple[str, list[Any]]:
        """SELECT-list SQL giving each of ``fields`` (top-level key → ``number`` or ``text``) of
        the JSON ``column`` as a column of that name, and its parameters. Here one extraction per
        field; engines that can read the document once for all of them override it."""
        parts: list[str] = []
        params: list[Any] = []
        for name, kind in fields.items():
            if kind == "number":
                sql, number_params = self.json_number(column, name)
                params += number_params
            else:
                sql, param = self.json_text(column, name)
                params.append(param)
            parts.append(f"{sql} AS {name}")
        return ", ".join(parts), params

    @abstractmethod
    def json_keys(self, column: str) -> str:
        """A set-returning select item: one row per top-level key of the JSON object ``column``."""

    def json_may_have(self, column: str, key: str) -> tuple[str, Any]:
        """A cheap test that ``column`` *may* have the top-level ``key`` (never false when it
        has it), to skip extracting values from most rows; and its parameter. Here: always."""
        return "(CAST(? AS TEXT) IS NOT NULL)", key

    def text_matches(self, expression: str) -> str:
        """SQL true when the text ``expression`` matches the regular expression in one ``?``
        parameter (POSIX classes, which both engines read alike)."""
        return f"regexp_matches({expression}, ?)"

    def tune_for_analytics(self) -> None:
        """Prepares this transaction for large set-oriented queries (a no-op where not needed)."""
        return None

    #: Appended to a ``SELECT … FOR UPDATE`` claim so concurrent workers take different rows
    #: (empty where one process owns the store).
    skip_locked: str = ""

    def member(self, expression: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        """SQL true when ``expression`` is one of ``values``, and its parameters. Here an
        ``IN`` list of placeholders; engines override it with one array parameter, which they
        plan much faster for the thousands of ids a batch asks about."""
        if not values:
            return "FALSE", []
        return f"{expression} IN ({', '.join('?' for _ in values)})", list(values)

    def row_sources(
        self, columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[Any]]
    ) -> Iterator[tuple[str, list[Any]]]:
        """``rows`` as relations named ``v`` with ``columns`` (name, SQL type), for bulk
        ``INSERT … SELECT … FROM {source}`` and ``UPDATE … FROM {source}``: yields (SQL, params)
        per chunk. Here ``VALUES`` lists of typed placeholders (PostgreSQL cannot infer the type
        of a NULL inside VALUES); engines with a faster path (DuckDB: an Arrow table) override it.
        """
        names = ", ".join(name for name, _ in columns)
        row = "(" + ", ".join(f"CAST(? AS {kind})" for _, kind in columns) + ")"
        for start in range(0, len(rows), 1000):
            chunk = rows[start : start + 1000]
            yield (
                f"(VALUES {', '.join([row] * len(chunk))}) AS v({names})",
                [value for values in chunk for value in values],
            )

    def notify(self, channel: str) -> None:
        """Wakes listeners in other processes once this transaction commits (no-op in-process)."""
        return None

    def lock_named(self, name: str) -> None:
        """Serialises work named ``name`` across processes until the transaction ends (a no-op
        where one process owns the store)."""
        return None

    @abstractmethod
    def lock_identity_graph(self) -> None:
        """Serialises identity-graph changes across processes (a no-op where one writer is given)."""


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    kind: str  # "write" | "secret"
    name: str
    created_at: datetime
    revoked_at: datetime | None = None
    #: Web origins a browser may send with this key from ("https://shop.example"; "*": any).
    origins: tuple[str, ...] = ()


def _key(row: Sequence[Any]) -> ApiKey:
    key_id, kind, name, created_at, revoked_at, origins = row
    return ApiKey(key_id, kind, name, created_at, revoked_at, tuple(origins.split()) if origins else ())


_KEY_COLUMNS = "key_id, kind, name, created_at, revoked_at, origins"


def like_literal(text: str) -> str:
    """``text`` for a ``LIKE … ESCAPE '\\'`` pattern that matches it literally (``%``, ``_`` and
    the backslash stand for themselves)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


class Store(ABC):
    """The store every feature talks to. Open one with :func:`percorso.store.open_store`."""

    engine: str = ""
    #: What the engine's driver raises: trouble of the store (a transaction to retry), never
    #: of one item in it.
    database_errors: tuple[type[Exception], ...] = ()
    #: Held around writes on engines that allow one writer per process (DuckDB).
    write_lock: threading.Lock | None = None

    @abstractmethod
    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed when the block ends, rolled back on error."""

    @abstractmethod
    def close(self) -> None: ...

    def describe(self) -> str:
        return self.engine

    # -- erasure on disk ----------------------------------------------------------------------
    def after_erasure(self, tables: Sequence[str]) -> None:
        """Called once an erasure has committed, with the tables it deleted from: each engine
        removes what it can of the deleted rows' bytes from its files (see docs/contacts.md)."""
        return None

    def erasures_pending(self) -> bool:
        """Whether an erasure awaits :meth:`compact` (engines where it is a separate step)."""
        return False

    def compact(self) -> dict[str, Any]:
        """Rewrites the store so nothing deleted stays in its files; ``{}`` where the engine
        needs no separate step."""
        return {}

    # -- schema -------------------------------------------------------------------------------
    def _migration_sql(self, sql: str) -> str:
        return (
            re.sub(r"(?m)^\s*--pg .*$", "", sql)
            .replace("{json}", "JSON")
            .replace("{bytes}", "BLOB")
            .replace("{events_indexes}", "")
            .replace("{events_received_index}", "")
        )

    def schema_version(self) -> int:
        with self.session() as s:
            s.lock_identity_graph()  # processes starting at once: one creates the table
            s.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL)"
            )
            rows = s.rows("SELECT max(version) FROM schema_migrations")
        return int(rows[0][0] or 0)

    def migrate(self) -> list[str]:
        """Applies every migration not recorded as applied, in order (a version missing below the
        newest applied one is applied too); returns their names."""
        applied = []
        current = self.schema_version()
        latest = MIGRATIONS[-1].version
        if current > latest:
            raise StoreError(
                f"the database is at schema version {current}, newer than this percorso ({latest}); upgrade percorso"
            )
        with self.session() as s:
            recorded = {int(r[0]) for r in s.rows("SELECT version FROM schema_migrations")}
        for migration in MIGRATIONS:
            if migration.version in recorded:
                continue
            with self.session() as s:
                s.lock_identity_graph()  # one migrator at a time on a shared database
                done = s.rows("SELECT 1 FROM schema_migrations WHERE version = ?", [migration.version])
                if done:
                    continue
                for statement in _statements(self._migration_sql(migration.sql)):
                    s.execute(statement)
                if migration.repair is not None:
                    migration.repair(s)
                s.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    [migration.version, migration.name, datetime.now(UTC)],
                )
            applied.append(f"{migration.version}: {migration.name}")
        return applied

    # -- ingestion ----------------------------------------------------------------------------
    def ingest(self, events: list[Event], *, also: Callable[[Session], None] | None = None) -> set[str]:
        """Resolves identities and appends events in one transaction; returns ids newly stored.

        ``also`` runs inside the same transaction, after the events are written (the outbox marks
        a message sent and records it as an event atomically)."""
        from percorso.store.ingest import write_batch

        if not events:
            return set()
        lock = self.write_lock
        if lock is not None:
            lock.acquire()
        try:
            with self.session() as s:
                stored = write_batch(s, events, datetime.now(UTC))
                if also is not None:
                    also(s)
                if stored:
                    s.notify(EVENTS_CHANNEL)
        finally:
            if lock is not None:
                lock.release()
        if stored:
            self.events_arrived.set()
        return stored

    @property
    def events_arrived(self) -> threading.Event:
        """Set after every commit that stored events: wakes this process's automation worker."""
        signal = self.__dict__.get("_events_arrived")
        if signal is None:
            signal = self.__dict__.setdefault("_events_arrived", threading.Event())
        return signal

    @contextmanager
    def writing(self) -> Iterator[Session]:
        """A write transaction outside ingestion (erasure, consent, keys)."""
        lock = self.write_lock
        if lock is not None:
            lock.acquire()
        try:
            with self.session() as s:
                yield s
        finally:
            if lock is not None:
                lock.release()

    # -- api keys -----------------------------------------------------------------------------
    def create_api_key(self, kind: str, name: str, origins: Sequence[str] = ()) -> tuple[ApiKey, str]:
        """Creates a key; the secret is returned once and only its hash is kept. ``origins``:
        the web origins browsers may send with it from (see :func:`percorso.collect.keys.origin`)."""
        if kind not in ("write", "secret"):
            raise ValueError(f"key kind must be 'write' or 'secret', not {kind!r}")
        prefix = "wk" if kind == "write" else "sk"
        secret = f"{prefix}_{secrets.token_urlsafe(24)}"
        key = ApiKey(
            key_id=f"{prefix}_{secrets.token_hex(4)}",
            kind=kind,
            name=name,
            created_at=datetime.now(UTC),
            origins=tuple(origins),
        )
        with self.writing() as s:
            s.execute(
                "INSERT INTO api_keys (key_id, kind, name, key_hash, created_at, origins) VALUES (?, ?, ?, ?, ?, ?)",
                [key.key_id, kind, name, hash_key(secret), key.created_at, " ".join(origins) or None],
            )
        return key, secret

    def set_key_origins(self, key_id: str, origins: Sequence[str]) -> ApiKey | None:
        """Replaces the web origins of an active key; None when there is no such key."""
        with self.writing() as s:
            s.execute(
                "UPDATE api_keys SET origins = ? WHERE key_id = ? AND revoked_at IS NULL",
                [" ".join(origins) or None, key_id],
            )
            rows = s.rows(
                f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_id = ? AND revoked_at IS NULL", [key_id]
            )
        return _key(rows[0]) if rows else None

    def api_keys(self) -> list[ApiKey]:
        with self.session() as s:
            rows = s.rows(f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY created_at")
        return [_key(row) for row in rows]

    def find_api_key(self, secret: str) -> ApiKey | None:
        with self.session() as s:
            rows = s.rows(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_hash = ?", [hash_key(secret)])
        return _key(rows[0]) if rows else None

    def browser_origins(self) -> set[str]:
        """Every web origin some active write key allows ("*" among them if one allows any)."""
        with self.session() as s:
            rows = s.rows(
                "SELECT origins FROM api_keys WHERE kind = 'write' AND revoked_at IS NULL AND origins IS NOT NULL"
            )
        return {o for (text,) in rows for o in text.split()}

    def revoke_api_key(self, key_id: str) -> bool:
        with self.writing() as s:
            found = s.rows("SELECT 1 FROM api_keys WHERE key_id = ? AND revoked_at IS NULL", [key_id])
            if found:
                s.execute("UPDATE api_keys SET revoked_at = ? WHERE key_id = ?", [datetime.now(UTC), key_id])
        return bool(found)

    def analyze(self) -> None:
        """Refreshes the planner's statistics after a bulk load (where the engine keeps any)."""
        return None

    def reset(self) -> None:
        """Deletes every row (schema and keys' table stay). For tests and ``demo --fresh``."""
        with self.writing() as s:
            for table in (
                "events",
                "identities",
                "contacts",
                "identity_conflicts",
                "erasures",
                "api_keys",
                "journeys",
                "stage_entries",
                "account_stage_entries",
                "stage_progress",
                "automations",
                "automation_versions",
                "enrollments",
                "enrollment_log",
                "outbox",
                "onsite_messages",
                "unsubscribes",
                "automation_cursor",
                "users",
                "web_sessions",
                "map_notes",
                "segments",
                "segment_members",
                "automation_triggers",
                "trigger_occurrences",
                "surveys",
                "heatmap_clicks",
                "heatmap_screenshots",
                "survey_answers",
                "opportunities",
            ):
                s.execute(f"DELETE FROM {table}")

    # -- contacts (see store/contacts.py) -----------------------------------------------------
    def counts(self) -> dict[str, int]:
        with self.session() as s:
            events = s.rows("SELECT count(*) FROM events")[0][0]
            contacts = s.rows("SELECT count(*) FROM contacts WHERE merged_into IS NULL")[0][0]
            identities = s.rows("SELECT count(*) FROM identities")[0][0]
        return {"events": int(events), "contacts": int(contacts), "identities": int(identities)}


def _statements(sql: str) -> list[str]:
    return [part.strip() for part in sql.split(";") if part.strip()]
