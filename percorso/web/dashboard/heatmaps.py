"""Dashboard page: heatmaps — for a page pattern, a period and a viewport band, the clicks drawn
over the page itself (the user's site in a sandboxed frame), the elements clicked most with their
rage and dead clicks, and the scroll map; the same numbers as ``GET /v1/heatmaps``."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import Response

from percorso.analytics.heatmap import BANDS, heatmap
from percorso.web.dashboard.filters import PageError, period
from percorso.web.dashboard.render import page
from percorso.web.dashboard.twins import Viewer, both_on, store_of

router = APIRouter(include_in_schema=False)
both = both_on(router)

#: The width the page is drawn at, per band (the clicks' columns are shares of the page's width).
WIDTHS = {"desktop": 1200, "tablet": 800, "mobile": 390}


def _site(request: Request, path: str) -> str | None:
    """The page to draw beneath the clicks: ``site`` if given (http or https), else the first web
    origin a write key allows, with the pattern's path when it has no wildcard."""
    site = (request.query_params.get("site") or "").strip()
    if site:
        parts = urlsplit(site)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise PageError("site must be an http:// or https:// address", "site")
        return site
    if "*" in path or "?" in path:
        return None
    origins = sorted(o for o in store_of(request).browser_origins() if o != "*")
    return origins[0] + path if origins else None


@both("/heatmaps")
def heatmaps_page(request: Request, session: Viewer) -> Response:
    q = request.query_params
    path = (q.get("page") or "/").strip()[:500]
    if not path.startswith(("/", "*")):
        raise PageError("page is a path on your site, e.g. /checkout or /products/*", "page")
    band = q.get("band") or "desktop"
    if band not in BANDS:
        raise PageError(f"band is one of {', '.join(BANDS)}", "band")
    span = period(request)
    result = heatmap(store_of(request), path, span.start, span.end, band=band)
    rows = max([c["row"] for c in result["grid"]["cells"]] + [19]) + 1
    data: dict[str, Any] = {
        "page": path,
        "band": band,
        "bands": BANDS,
        "period": span.as_dict(),
        "site": _site(request, path),
        "width": WIDTHS[band],
        "rows": rows,
        "result": result,
        "scroll_chart": {
            "labels": [f"{r['depth']}%" for r in result["scroll"]["reached"]],
            "values": [
                round(100 * r["share"], 1) if r["share"] is not None else None
                for r in result["scroll"]["reached"]
            ],
        },
    }
    return page(request, "heatmaps.html", data, active="heatmaps")
