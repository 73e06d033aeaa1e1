"""Typed copies of some events: the collector stores an event like any other and, in the same
transaction, copies the fields a hot query reads into a table of typed columns (heatmap clicks in
store/clicks.py, survey answers in store/answers.py), so that query aggregates numbers and short
strings instead of parsing millions of JSON documents. The copy is made inside the engine, from
the stored events; a migration makes it for the events stored before its table existed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from percorso.store.base import Session


def copy_events(
    s: Session,
    table: str,
    event: str,
    columns: str,
    fields: str,
    params: Sequence[Any],
    message_ids: Sequence[str] | None = None,
    *,
    values: str | None = None,
) -> None:
    """Copies the track events named ``event`` among ``message_ids`` (None: all stored) into
    ``table``: ``fields`` (aliased expressions over the event ``e``, with ``params``) are read
    beside each event's message id, identity, time and page path, and ``values`` (by default
    ``columns`` themselves) are written to ``columns``."""
    where = "e.type = 'track' AND e.event = ?"
    where_params: list[Any] = [event]
    if message_ids is not None:
        among, among_params = s.member("e.message_id", list(message_ids))
        where += f" AND {among}"
        where_params += among_params
    s.execute(
        f"INSERT INTO {table} ({columns}) SELECT {values or columns} FROM (SELECT e.message_id, "
        f"e.identity_id, e.timestamp, e.page_path, {fields} FROM events e WHERE {where}) c",
        [*params, *where_params],
    )
