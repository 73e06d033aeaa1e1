"""Heatmaps inside the store engine, from the ``Heatmap Click`` and ``Page Scrolled`` events
percorso.js sends (docs/tracker.md#heatmaps): for a page pattern, a period and a viewport band,

- the click map: clicks counted in a grid over the page (columns are shares of the page's width,
  so pages of any width line up; rows are 50-pixel bands from the top);
- the elements clicked most, with their rage clicks and dead clicks (each a pain-point candidate);
- the scroll map: the share of page views that reached each tenth of the page.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from percorso.analytics.sql import like_pattern
from percorso.store import Store

SCROLLED = "Page Scrolled"
COLUMNS = 20
ROW_PIXELS = 50
BANDS = ("desktop", "tablet", "mobile")


def heatmap(
    store: Store, page: str, start: datetime, end: datetime, *, band: str | None = None, top: int = 20
) -> dict[str, Any]:
    """The click map, top elements and scroll map of the pages matching ``page`` (``*`` wildcards)."""
    if band is not None and band not in BANDS:
        raise ValueError(f"band must be one of {', '.join(BANDS)}, not {band!r}")
    with store.session() as s:
        s.tune_for_analytics()
        # Clicks from their typed copy (store/clicks.py); scroll depths from the events.
        clicked = "c.page_path LIKE ? ESCAPE '\\' AND c.timestamp >= ? AND c.timestamp < ?"
        base: list[Any] = [like_pattern(page), start, end]
        if band is not None:
            clicked += " AND c.band = ?"
        click_params = [*base, *([] if band is None else [band])]
        totals = s.rows(
            "SELECT count(*), sum(CASE WHEN c.rage THEN 1 ELSE 0 END), sum(CASE WHEN c.dead THEN 1 ELSE 0 END) "
            f"FROM heatmap_clicks c WHERE {clicked}",
            click_params,
        )[0]
        grid = s.rows(
            f"SELECT least(CAST(floor(c.x / c.width * {COLUMNS}) AS INTEGER), {COLUMNS - 1}) AS col, "
            f"CAST(floor(c.y / {ROW_PIXELS}) AS INTEGER) AS row_index, count(*) FROM heatmap_clicks c "
            f"WHERE {clicked} AND c.x IS NOT NULL AND c.y IS NOT NULL AND c.width > 0 AND c.x >= 0 AND c.y >= 0 "
            "GROUP BY 1, 2 ORDER BY 2, 1",
            click_params,
        )
        elements = s.rows(
            "SELECT c.selector, count(*) AS n, sum(CASE WHEN c.rage THEN 1 ELSE 0 END), "
            f"sum(CASE WHEN c.dead THEN 1 ELSE 0 END) FROM heatmap_clicks c WHERE {clicked} "
            "AND c.selector IS NOT NULL GROUP BY c.selector ORDER BY n DESC, c.selector LIMIT ?",
            [*click_params, top],
        )
        where = "e.type = 'track' AND e.event = ? AND e.page_path LIKE ? ESCAPE '\\' AND e.timestamp >= ? AND e.timestamp < ?"
        banded = "TRUE" if band is None else "band = ?"
        band_params = [] if band is None else [band]
        scroll_fields, scroll_params = s.json_columns("e.properties", {"depth": "number", "band": "text"})
        reach = s.rows(
            f"SELECT count(depth), {', '.join(f'sum(CASE WHEN depth >= {d} THEN 1 ELSE 0 END)' for d in range(10, 101, 10))} "
            f"FROM (SELECT {scroll_fields} FROM events e WHERE {where}) d WHERE {banded}",
            [*scroll_params, SCROLLED, *base, *band_params],
        )[0]
    views = int(reach[0] or 0)
    return {
        "page": page,
        "band": band,
        "from": start.isoformat(),
        "to": end.isoformat(),
        "clicks": int(totals[0] or 0),
        "rage_clicks": int(totals[1] or 0),
        "dead_clicks": int(totals[2] or 0),
        "grid": {
            "columns": COLUMNS,
            "row_pixels": ROW_PIXELS,
            "cells": [{"column": int(c), "row": int(r), "clicks": int(n)} for c, r, n in grid],
        },
        "elements": [
            {"selector": sel, "clicks": int(n), "rage_clicks": int(rage or 0), "dead_clicks": int(dead or 0)}
            for sel, n, rage, dead in elements
        ],
        "scroll": {
            "page_views": views,
            "reached": [
                {"depth": d, "share": round(int(n or 0) / views, 4) if views else None}
                for d, n in zip(range(10, 101, 10), reach[1:], strict=True)
            ],
        },
    }
