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
from percorso.store.typed import copy_events

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
    columns = "message_id, identity_id, timestamp, page_path, selector, x, y, width, band, rage, dead"
    values = columns.replace("rage, dead", "coalesce(rage = 'true', FALSE), coalesce(dead = 'true', FALSE)")
    copy_events(s, "heatmap_clicks", CLICK, columns, fields, params, message_ids, values=values)
