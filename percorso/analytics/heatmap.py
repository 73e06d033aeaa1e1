"""Heatmaps inside the store engine, from the ``Heatmap Click`` and ``Page Scrolled`` events
percorso.js sends (docs/tracker.md#heatmaps): for a page pattern, a period and a viewport band,

- the click map: clicks counted in a grid over the page (columns are shares of the page's width,
  so pages of any width line up; rows are 50-pixel bands from the top);
- the elements clicked most, with their rage clicks and dead clicks (each a pain-point candidate);
- the scroll map: the share of page views that reached each tenth of the page.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from percorso.analytics.sql import like_pattern
from percorso.store import Store

CLICK = "Heatmap Click"
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
        band_sql, band_param = s.json_text("e.properties", "band")
        where = "e.type = 'track' AND e.event = ? AND e.page_path LIKE ? ESCAPE '\\' AND e.timestamp >= ? AND e.timestamp < ?"
        base: list[Any] = [like_pattern(page), start, end]
        if band is not None:
            where += f" AND {band_sql} = ?"
            base += [band_param, band]
        selector_sql, selector_param = s.json_text("e.properties", "selector")
        x_sql, x_params = s.json_number("e.properties", "x")
        y_sql, y_params = s.json_number("e.properties", "y")
        w_sql, w_params = s.json_number("e.properties", "width")
        rage_sql, rage_param = s.json_text("e.properties", "rage")
        dead_sql, dead_param = s.json_text("e.properties", "dead")
        clicks = (
            f"SELECT {selector_sql} AS selector, {x_sql} AS x, {y_sql} AS y, {w_sql} AS w, "
            f"{rage_sql} AS rage, {dead_sql} AS dead FROM events e WHERE {where}"
        )
        click_params = [selector_param, *x_params, *y_params, *w_params, rage_param, dead_param, CLICK, *base]
        table = f"heat_clicks_{uuid.uuid4().hex[:12]}"  # this query's own, whatever runs beside it
        s.execute(f"CREATE TEMP TABLE {table} AS {clicks}", click_params)
        try:
            totals = s.rows(
                "SELECT count(*), sum(CASE WHEN rage = 'true' THEN 1 ELSE 0 END), "
                f"sum(CASE WHEN dead = 'true' THEN 1 ELSE 0 END) FROM {table}"
            )[0]
            grid = s.rows(
                f"SELECT least(CAST(floor(x / w * {COLUMNS}) AS INTEGER), {COLUMNS - 1}) AS col, "
                f"CAST(floor(y / {ROW_PIXELS}) AS INTEGER) AS row_index, count(*) FROM {table} "
                "WHERE x IS NOT NULL AND y IS NOT NULL AND w > 0 AND x >= 0 AND y >= 0 GROUP BY 1, 2 ORDER BY 2, 1"
            )
            elements = s.rows(
                "SELECT selector, count(*) AS n, sum(CASE WHEN rage = 'true' THEN 1 ELSE 0 END), "
                f"sum(CASE WHEN dead = 'true' THEN 1 ELSE 0 END) FROM {table} WHERE selector IS NOT NULL "
                "GROUP BY selector ORDER BY n DESC, selector LIMIT ?",
                [top],
            )
        finally:
            s.execute(f"DROP TABLE {table}")
        depth_sql, depth_params = s.json_number("e.properties", "depth")
        reach = s.rows(
            f"SELECT count(depth), {', '.join(f'sum(CASE WHEN depth >= {d} THEN 1 ELSE 0 END)' for d in range(10, 101, 10))} "
            f"FROM (SELECT {depth_sql} AS depth FROM events e WHERE {where}) d",
            [*depth_params, SCROLLED, *base],
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
