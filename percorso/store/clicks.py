"""Heatmap clicks in typed columns.

percorso.js sends each click on a heatmap page as a ``Heatmap Click`` track event
(docs/tracker.md#heatmaps). The event is stored like any other — on the timeline, in exports,
erased with the contact — and, in the same transaction, its fields are copied into
``heatmap_clicks``, so a heatmap over a page with millions of clicks aggregates typed columns
instead of parsing millions of JSON documents. The copy is made inside the engine, from the
stored events, with the same extraction the heatmap used to run at query time.
"""

from __future__ import annotations

from collections.abc import Sequence

from percorso.store.base import Session

CLICK = "Heatmap Click"
FIELDS = {
    "selector": "text",
    "x": "number",
    "y": "number",
    "width": "number",
    "band": "text",
    "rage": "text",
    "dead": "text",
}


def copy_clicks(s: Session, message_ids: Sequence[str] | None = None) -> None:
    """Copies the ``Heatmap Click`` events among ``message_ids`` (None: all stored) into
    ``heatmap_clicks``. ``rage`` and ``dead`` are true only when the event says ``true``."""
    fields, params = s.json_columns("e.properties", FIELDS)
    where = "e.type = 'track' AND e.event = ?"
    where_params: list[object] = [CLICK]
    if message_ids is not None:
        among, among_params = s.member("e.message_id", list(message_ids))
        where += f" AND {among}"
        where_params += among_params
    s.execute(
        "INSERT INTO heatmap_clicks (message_id, identity_id, timestamp, page_path, selector, x, y, width, "
        "band, rage, dead) SELECT message_id, identity_id, timestamp, page_path, selector, x, y, width, band, "
        "coalesce(rage = 'true', FALSE), coalesce(dead = 'true', FALSE) FROM (SELECT e.message_id, "
        f"e.identity_id, e.timestamp, e.page_path, {fields} FROM events e WHERE {where}) c",
        [*params, *where_params],
    )
