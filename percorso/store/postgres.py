"""The production store: PostgreSQL through psycopg 3 and a connection pool."""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from operator import attrgetter
from typing import Any

import psycopg
from psycopg.types.string import TextLoader
from psycopg_pool import ConnectionPool, PoolTimeout

from percorso.events import EVENT_COLUMNS, Event
from percorso.store.base import DataRejected, Session, Store, StoreError, StoreUnavailable

log = logging.getLogger("percorso.store")

#: One lock id for identity-graph changes, shared by every process on the database.
IDENTITY_LOCK = 0x7065_7263  # "perc"
_GETTER = attrgetter(*EVENT_COLUMNS)
_PG_TYPES = {"JSON": "JSONB"}
_COLUMNS = ", ".join(EVENT_COLUMNS)


@lru_cache(maxsize=512)
def to_pyformat(sql: str) -> str:
    """Shared SQL uses ``?`` placeholders; psycopg wants ``%s`` (and literal ``%`` doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


class PostgresSession(Session):
    json_type = "JSONB"

    def __init__(self, conn: psycopg.Connection[Any]):
        self.conn = conn
        self.cur = conn.cursor()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.cur.execute(to_pyformat(sql), list(params) if params else None)

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self.cur.execute(to_pyformat(sql), list(params) if params else None)
        return self.cur.fetchall()

    def last_columns(self) -> list[str]:
        return [d.name for d in self.cur.description or []]

    def json_number(self, column: str, key: str) -> tuple[str, list[Any]]:
        return (
            f"(CASE WHEN jsonb_typeof({column} -> ?::text) = 'number' THEN ({column} ->> ?::text)::float8 END)",
            [key, key],
        )

    def json_text(self, column: str, key: str) -> tuple[str, Any]:
        return f"({column} ->> ?::text)", key

    def text_matches(self, expression: str) -> str:
        return f"({expression} ~ ?)"

    def json_keys(self, column: str) -> str:
        return f"jsonb_object_keys(CASE WHEN jsonb_typeof({column}) = 'object' THEN {column} END)"

    def json_may_have(self, column: str, key: str) -> tuple[str, Any]:
        return f"jsonb_exists({column}, ?::text)", key

    def insert_events(self, events: list[Event]) -> set[str]:
        if not events:
            return set()
        cur = self.cur
        cur.execute("CREATE TEMP TABLE IF NOT EXISTS events_staging (LIKE events) ON COMMIT DELETE ROWS")
        with cur.copy(f"COPY events_staging ({_COLUMNS}) FROM STDIN") as copy:
            for event in events:
                copy.write_row(_GETTER(event))
        cur.execute(
            f"INSERT INTO events ({_COLUMNS}) SELECT {_COLUMNS} FROM events_staging "
            "ON CONFLICT (message_id) DO NOTHING RETURNING message_id"
        )
        return {row[0] for row in cur.fetchall()}

    def next_ids(self, sequence: str, count: int) -> list[int]:
        self.cur.execute(f"SELECT nextval('{sequence}') FROM generate_series(1, %s)", [count])
        return [int(r[0]) for r in self.cur.fetchall()]

    def lock_identity_graph(self) -> None:
        self.cur.execute("SELECT pg_advisory_xact_lock(%s)", [IDENTITY_LOCK])

    def tune_for_analytics(self) -> None:
        # Analytics chain CTEs whose row counts PostgreSQL cannot estimate (it assumes one row and
        # picks nested loops, quadratic in contacts); hash and merge joins are right for these scans.
        self.cur.execute("SET LOCAL enable_nestloop = off")
        self.cur.execute("SET LOCAL work_mem = '64MB'")

    skip_locked = " FOR UPDATE SKIP LOCKED"

    def member(self, expression: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        if not values:
            return "FALSE", []
        return f"{expression} = ANY(?)", [list(values)]

    def row_sources(
        self, columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[Any]]
    ) -> Iterator[tuple[str, list[Any]]]:
        # One array parameter per column, unnested: a statement PostgreSQL parses and plans once
        # whatever the number of rows (VALUES lists of thousands of rows cost more than the write).
        if not rows:
            return
        kinds = [_PG_TYPES.get(kind, kind) for _, kind in columns]
        names = ", ".join(name for name, _ in columns)
        if len(rows) < 500:
            arrays = ", ".join(f"CAST(? AS {kind}[])" for kind in kinds)
            yield (
                f"unnest({arrays}) AS v({names})",
                [list(values) for values in zip(*rows, strict=True)],
            )
            return
        # Thousands of rows: COPY into a staging table (dumping arrays row by row is slower).
        shape = ", ".join(f"{name} {kind}" for (name, _), kind in zip(columns, kinds, strict=True))
        staging = "percorso_rows_" + hashlib.sha1(shape.encode()).hexdigest()[:10]
        self.cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS {staging} ({shape}) ON COMMIT DELETE ROWS")
        self.cur.execute(f"TRUNCATE {staging}")
        with self.cur.copy(f"COPY {staging} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        yield f"{staging} AS v", []

    def notify(self, channel: str) -> None:
        self.cur.execute(f"NOTIFY {channel}")

    def lock_named(self, name: str) -> None:
        self.cur.execute("SELECT pg_advisory_xact_lock(%s::int4, hashtext(%s))", [IDENTITY_LOCK, name])


def _configure(conn: psycopg.Connection[Any]) -> None:
    # JSON columns come back as text on both engines, so callers decode them one way.
    conn.adapters.register_loader("jsonb", TextLoader)
    conn.adapters.register_loader("json", TextLoader)


class PostgresStore(Store):
    engine = "postgres"
    database_errors = (psycopg.Error,)

    def __init__(self, url: str, *, pool_size: int = 8):
        self.url = url
        try:
            # One direct attempt first: a wrong URL fails at once instead of after the pool's retries.
            psycopg.connect(url, connect_timeout=5).close()
            self.pool = ConnectionPool(
                url,
                min_size=1,
                max_size=max(pool_size, 2),
                kwargs={"options": "-c timezone=UTC", "autocommit": False},
                configure=_configure,
                open=True,
                timeout=10,
            )
            self.pool.wait(timeout=10)
        except (PoolTimeout, psycopg.OperationalError) as exc:
            raise StoreUnavailable(f"cannot connect to PostgreSQL at {_redact(url)}: {exc}") from None

    def analyze(self) -> None:
        # After a bulk load the statistics are stale until autovacuum runs, and the planner then
        # picks nested loops over CTEs for analytics: refresh them now.
        with self.session() as s:
            for table in ("events", "identities", "contacts", "enrollments", "outbox"):
                s.execute(f"ANALYZE {table}")

    def describe(self) -> str:
        return f"postgres:{_redact(self.url)}"

    def reset(self) -> None:
        super().reset()
        # Like a new database: ids start again at 1, so a test's contacts get the same ids (and
        # the same split and holdout buckets) whichever tests ran before it.
        with self.writing() as s:
            for sequence in s.rows(
                "SELECT sequencename FROM pg_sequences WHERE schemaname = current_schema()"
            ):
                s.execute(f'ALTER SEQUENCE "{sequence[0]}" RESTART')

    def _migration_sql(self, sql: str) -> str:
        return (
            sql.replace("--pg ", "")
            .replace("{json}", "JSONB")
            .replace("{bytes}", "BYTEA")
            .replace(
                "{events_indexes}",
                "CREATE INDEX events_identity_time ON events (identity_id, timestamp);"
                "CREATE INDEX events_time ON events (timestamp);",
            )
            .replace("{events_received_index}", "CREATE INDEX events_received ON events (received_at);")
        )

    @contextmanager
    def session(self) -> Iterator[Session]:
        try:
            with self.pool.connection() as conn, conn.transaction():
                yield PostgresSession(conn)
        except PoolTimeout as exc:
            raise StoreUnavailable(f"no database connection available: {exc}") from None
        except psycopg.errors.DataError as exc:
            raise DataRejected(str(exc).strip()) from None
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(str(exc).strip()) from None

    def after_erasure(self, tables: Sequence[str]) -> None:
        """VACUUM each table the erasure deleted from: pruning rewrites the heap pages that held
        the rows (and their TOAST), so the bytes leave the table files at once. Only pages with
        dead rows are visited, and VACUUM does not block reads or writes."""
        try:
            with self.pool.connection() as conn:
                conn.autocommit = True  # VACUUM cannot run inside a transaction
                try:
                    if not _older_snapshots_gone(conn, ERASURE_WAIT_SECONDS):
                        log.warning(
                            "after an erasure, a transaction older than it is still open: VACUUM runs now, "
                            "and the rows it still sees leave at the next vacuum"
                        )
                    for table in tables:
                        # INDEX_CLEANUP ON: with few dead rows VACUUM may skip the indexes
                        conn.execute(f"VACUUM (INDEX_CLEANUP ON) {table}")
                    if "identities" in tables:
                        # A B-tree page keeps a deleted entry's bytes in its free space until the
                        # space is reused: the index of identifiers (e-mails, user ids) is rebuilt
                        # into new files, without blocking reads or writes.
                        conn.execute("REINDEX INDEX CONCURRENTLY identities_kind_value_key")
                finally:
                    conn.autocommit = False
        except (PoolTimeout, psycopg.OperationalError) as exc:
            # The erasure itself has committed; autovacuum reaches the pages later.
            log.warning("after an erasure, VACUUM could not run (autovacuum will): %s", exc)

    def close(self) -> None:
        self.pool.close()


#: How long an erasure waits for transactions that began before it (a report running, an
#: autovacuum ANALYZE) to end, so that VACUUM may remove what they could still see.
ERASURE_WAIT_SECONDS = 10.0

_SNAPSHOTS = (
    "SELECT pid, backend_xmin::text FROM pg_stat_activity WHERE datname = current_database() "
    "AND pid <> pg_backend_pid() AND backend_xmin IS NOT NULL"
)


def _older_snapshots_gone(conn: psycopg.Connection[Any], seconds: float) -> bool:
    """Waits until every snapshot open in this database when called (other sessions, autovacuum
    workers) has ended or moved on; VACUUM cannot remove rows a snapshot may still see."""
    older = set(conn.execute(_SNAPSHOTS).fetchall())
    deadline = time.monotonic() + seconds
    while older and time.monotonic() < deadline:
        time.sleep(0.05)
        older &= set(conn.execute(_SNAPSHOTS).fetchall())
    return not older


def _redact(url: str) -> str:
    return re.sub(r"//([^:@/]+):[^@/]*@", r"//\1:***@", url)


__all__ = ["PostgresStore", "StoreError"]
