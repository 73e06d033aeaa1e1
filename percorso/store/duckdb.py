"""The embedded store: one DuckDB file in the data directory, zero configuration."""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from operator import attrgetter
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from percorso.events import EVENT_COLUMNS, Event
from percorso.store.base import DataRejected, Session, Store, StoreError, StoreUnavailable

log = logging.getLogger("percorso.store")

_TS = pa.timestamp("us", tz="UTC")
_TIME_COLUMNS = {"timestamp", "original_timestamp", "sent_at", "received_at"}
_SCHEMA = pa.schema(
    [
        (name, _TS if name in _TIME_COLUMNS else pa.int64() if name == "identity_id" else pa.string())
        for name in EVENT_COLUMNS
    ]
)
_ROW = attrgetter(*EVENT_COLUMNS)
_ARROW = {
    "BIGINT": pa.int64(),
    "INTEGER": pa.int32(),
    "TEXT": pa.string(),
    "JSON": pa.string(),
    "TIMESTAMPTZ": _TS,
    "DOUBLE": pa.float64(),
    "BOOLEAN": pa.bool_(),
}
_SOURCES = itertools.count()
_INSERT = (
    f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) SELECT * FROM percorso_batch "
    "ON CONFLICT DO NOTHING RETURNING message_id"
)


def json_pointer(key: str) -> str:
    """The JSON pointer (RFC 6901) to a top-level key: any key, backslashes and quotes included,
    names exactly itself. Example: ``json_pointer("a/b")`` → ``"/a~1b"``."""
    return "/" + key.replace("~", "~0").replace("/", "~1")


class DuckDBSession(Session):
    json_type = "JSON"

    def __init__(self, con: duckdb.DuckDBPyConnection):
        self.con = con
        self._columns: list[str] = []

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.con.execute(sql, list(params) if params else None)

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        result = self.con.execute(sql, list(params) if params else None)
        self._columns = [d[0] for d in result.description or []]
        return result.fetchall()

    def last_columns(self) -> list[str]:
        return self._columns

    def json_number(self, column: str, key: str) -> tuple[str, list[Any]]:
        path = json_pointer(key)
        return (
            f"(CASE WHEN json_type({column}, ?) IN ('UBIGINT', 'BIGINT', 'DOUBLE') "
            f"THEN CAST(json_extract({column}, ?) AS DOUBLE) END)",
            [path, path],
        )

    def json_text(self, column: str, key: str) -> tuple[str, Any]:
        return f"json_extract_string({column}, ?)", json_pointer(key)

    def json_columns(self, column: str, fields: dict[str, str]) -> tuple[str, list[Any]]:
        # One parse of the document for every field (json_transform reads it into a struct; a
        # value of another type reads as NULL), then the struct's fields by lateral alias.
        shape = {name: "DOUBLE" if kind == "number" else "VARCHAR" for name, kind in fields.items()}
        picked = ", ".join(f"struct_extract(json_fields__, '{name}') AS {name}" for name in fields)
        return f"json_transform({column}, ?) AS json_fields__, {picked}", [json.dumps(shape)]

    def json_keys(self, column: str) -> str:
        return f"unnest(json_keys(CASE WHEN json_type({column}) = 'OBJECT' THEN {column} END))"

    def json_may_have(self, column: str, key: str) -> tuple[str, Any]:
        # A substring search on the stored text costs a fraction of parsing the JSON.
        return f"contains(CAST({column} AS VARCHAR), ?)", '"' + key.replace("\\", "\\\\").replace(
            '"', '\\"'
        ) + '"'

    def insert_events(self, events: list[Event]) -> set[str]:
        if not events:
            return set()
        columns = zip(*[_ROW(e) for e in events], strict=True)
        table = pa.Table.from_arrays(
            [pa.array(values, type=field.type) for values, field in zip(columns, _SCHEMA, strict=True)],
            schema=_SCHEMA,
        )
        self.con.register("percorso_batch", table)
        try:
            return {row[0] for row in self.con.execute(_INSERT).fetchall()}
        finally:
            # When the insert failed it aborted the transaction: keep its error, not this one.
            with contextlib.suppress(duckdb.TransactionException):
                self.con.unregister("percorso_batch")

    def member(self, expression: str, values: Sequence[Any]) -> tuple[str, list[Any]]:
        if not values:
            return "FALSE", []
        return f"{expression} IN (SELECT unnest(?))", [list(values)]

    def row_sources(
        self, columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[Any]]
    ) -> Iterator[tuple[str, list[Any]]]:
        # One Arrow table read in place: binding thousands of parameters costs DuckDB far more.
        if not rows:
            return
        values = list(zip(*rows, strict=True))
        table = pa.Table.from_arrays(
            [pa.array(column, type=_ARROW[kind]) for column, (_, kind) in zip(values, columns, strict=True)],
            names=[name for name, _ in columns],
        )
        name = f"percorso_rows_{next(_SOURCES)}"
        self.con.register(name, table)
        try:
            yield f"{name} AS v", []
        finally:
            self.con.unregister(name)

    def next_ids(self, sequence: str, count: int) -> list[int]:
        return [
            int(r[0])
            for r in self.con.execute(f"SELECT nextval('{sequence}') FROM range(?)", [count]).fetchall()
        ]

    def lock_identity_graph(self) -> None:
        # One process owns a DuckDB file and its writes go through Store.write_lock.
        return None


#: Memory DuckDB may use for its buffers (MiB): the process stays under 2 GB analysing 10M events
#: (docs/performance.md). ``PERCORSO_DUCKDB_MEMORY_MB``; 0 leaves DuckDB's default.
DEFAULT_MEMORY_MB = 1536


class DuckDBStore(Store):
    engine = "duckdb"
    database_errors = (duckdb.Error,)

    def __init__(self, path: Path | str, *, read_only: bool = False, memory_mb: int = DEFAULT_MEMORY_MB):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot use {self.path.parent} as the data directory: {exc.strerror}") from None
        try:
            self._db = duckdb.connect(str(self.path), read_only=read_only)
        except duckdb.IOException as exc:
            if "lock" in str(exc).lower():
                raise StoreError(
                    f"{self.path} is in use by another process (probably a running `percorso serve`). "
                    "Stop it, or send data to the running server over HTTP instead (see `percorso import --url`)."
                ) from None
            raise StoreError(f"cannot open {self.path}: {exc}") from None
        self._read_only, self._memory_mb = read_only, int(memory_mb)
        self._configure()
        self.write_lock = threading.Lock()
        self._local = threading.local()

    def _configure(self) -> None:
        if not self._read_only:
            self._db.execute("SET GLOBAL TimeZone = 'UTC'")
        if self._memory_mb > 0:
            # DuckDB's own default is 80% of the machine's memory; larger sorts spill to disk
            # (next to the database file) instead.
            self._db.execute(f"SET GLOBAL memory_limit = '{self._memory_mb}MiB'")

    def describe(self) -> str:
        return f"duckdb:{self.path}"

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        # DuckDB connections are not thread-safe; each thread gets its own cursor on the database.
        cur = getattr(self._local, "cursor", None)
        if cur is None:
            cur = self._db.cursor()
            self._local.cursor = cur
        return cur

    @contextmanager
    def session(self) -> Iterator[Session]:
        con = self._cursor()
        con.begin()
        try:
            yield DuckDBSession(con)
        except duckdb.ConversionException as exc:
            con.rollback()
            raise DataRejected(str(exc)) from None  # as PostgreSQL's DataError: the value, not the store
        except BaseException:
            con.rollback()
            raise
        try:
            con.commit()
        except duckdb.TransactionException as exc:
            raise StoreUnavailable(f"write conflict, retry: {exc}") from None
        except (duckdb.ConversionException, duckdb.ConstraintException) as exc:
            raise DataRejected(str(exc)) from None

    def checkpoint(self) -> None:
        self._cursor().execute("CHECKPOINT")

    def after_erasure(self, tables: Sequence[str]) -> None:
        """CHECKPOINT: the write-ahead log, which holds the rows as they were inserted, is folded
        into the file and emptied. DuckDB keeps deleted rows' bytes in the file's row groups and
        free blocks until :meth:`compact` writes a new file: at the next start, or at once where
        the command owns the file (`percorso contacts erase`)."""
        try:
            self.checkpoint()
        except duckdb.Error as exc:  # another thread's transaction: DuckDB checkpoints on its own later
            log.warning("after an erasure, CHECKPOINT could not run yet: %s", exc)

    def erasures_pending(self) -> bool:
        """Whether a contact was erased since the file was last compacted."""
        with self.session() as s:
            erased = s.rows("SELECT max(erased_at) FROM erasures")[0][0]
            done = s.rows("SELECT value FROM instance_settings WHERE name = 'compacted_at'")
        if erased is None:
            return False
        return not done or datetime.fromisoformat(str(done[0][0])) < erased

    def compact(self) -> dict[str, Any]:
        """Copies every table, sequence, index and macro into a new file and puts it in place of
        the old one, so no deleted row's bytes remain in the database file. Needs the file to
        itself (no other thread using this store); takes about as long as reading it."""
        started = time.monotonic()
        before = self.path.stat().st_size
        with self.session() as s:
            s.execute("DELETE FROM instance_settings WHERE name = 'compacted_at'")
            s.execute(
                "INSERT INTO instance_settings (name, value) VALUES ('compacted_at', ?)",
                [datetime.now(UTC).isoformat()],
            )
        self.checkpoint()
        self._db.close()
        fresh = self.path.with_name(self.path.name + ".compacting")
        for leftover in (fresh, fresh.with_name(fresh.name + ".wal")):
            leftover.unlink(missing_ok=True)
        try:
            con = duckdb.connect(str(fresh))
            try:
                con.execute(
                    f"SET memory_limit = '{self._memory_mb}MiB'" if self._memory_mb > 0 else "SELECT 1"
                )
                [[name]] = con.execute("SELECT current_database()").fetchall()
                con.execute("ATTACH ? AS erased_from (READ_ONLY)", [str(self.path)])
                con.execute(f'COPY FROM DATABASE erased_from TO "{name}"')
                con.execute("DETACH erased_from")
                con.execute("CHECKPOINT")
            finally:
                con.close()
            with open(fresh, "rb") as f:
                os.fsync(f.fileno())
            os.replace(fresh, self.path)
            directory = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        finally:
            fresh.unlink(missing_ok=True)
            self._db = duckdb.connect(str(self.path))
            self._configure()
            self._local = threading.local()
        result = {
            "bytes_before": before,
            "bytes_after": self.path.stat().st_size,
            "seconds": round(time.monotonic() - started, 3),
        }
        log.info("compacted %s: %s", self.path, result)
        return result

    def close(self) -> None:
        self._db.close()
