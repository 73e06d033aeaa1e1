"""Dashboard page: heatmaps — for a page pattern, a period and a viewport band, the clicks drawn
over the page itself (the user's site in a sandboxed frame, or a screenshot an editor uploaded),
the elements clicked most with their
rage and dead clicks, and the scroll map; the same numbers as ``GET /v1/heatmaps``."""

from __future__ import annotations

import logging
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response
from starlette.datastructures import UploadFile

from percorso.analytics.heatmap import BANDS, ROW_PIXELS, heatmap
from percorso.analytics.screenshots import (
    MAX_BYTES,
    ScreenshotError,
    delete_screenshot,
    save_screenshot,
    screenshot,
    screenshot_image,
)
from percorso.web.dashboard.filters import PageError, period
from percorso.web.dashboard.render import page
from percorso.web.dashboard.security import secure_headers
from percorso.web.dashboard.twins import Editor, Viewer, both_on, store_of

log = logging.getLogger("percorso.dashboard")

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


def _page_and_band(values: Any) -> tuple[str, str]:
    path = str(values.get("page") or "/").strip()[:500]
    if not path.startswith(("/", "*")):
        raise PageError("page is a path on your site, e.g. /checkout or /products/*", "page")
    band = str(values.get("band") or "desktop")
    if band not in BANDS:
        raise PageError(f"band is one of {', '.join(BANDS)}", "band")
    return path, band


def _beneath(request: Request, path: str, band: str) -> dict[str, Any]:
    """What is drawn beneath the clicks: the page given as ``site``, else an uploaded screenshot
    of this page and band, else the live page at the first origin a write key allows."""
    shot = screenshot(store_of(request), path, band)
    explicit = (request.query_params.get("site") or "").strip()
    site = _site(request, path) if explicit or shot is None else None
    if shot is not None:
        width = WIDTHS[band]
        shot = {
            **shot,
            "url": f"/heatmaps/screenshot?{urlencode({'page': path, 'band': band})}",
            # drawn at the band's width, as the clicks are: a taller image is scaled to keep its shape
            "drawn_height": round(shot["height"] * width / shot["width"]),
            "scaled": shot["width"] != width,
        }
    return {"site": site, "screenshot": shot}


def _data(request: Request, path: str, band: str) -> dict[str, Any]:
    span = period(request)
    result = heatmap(store_of(request), path, span.start, span.end, band=band)
    beneath = _beneath(request, path, band)
    rows = max([c["row"] for c in result["grid"]["cells"]] + [19]) + 1
    shot = beneath["screenshot"]
    if shot is not None and not beneath["site"]:
        rows = max(rows, -(-shot["drawn_height"] // ROW_PIXELS))
    return {
        "page": path,
        "band": band,
        "bands": BANDS,
        "period": span.as_dict(),
        **beneath,
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
        "upload_error": None,
        "max_upload_mb": MAX_BYTES // 1024 // 1024,
    }


@both("/heatmaps")
def heatmaps_page(request: Request, session: Viewer) -> Response:
    path, band = _page_and_band(request.query_params)
    return page(request, "heatmaps.html", _data(request, path, band), active="heatmaps")


def _bounded_upload(request: Request) -> None:
    """Runs before the session (whose CSRF check reads the form): a body over the limit is
    refused by its declared length, before a byte of it is parsed."""
    declared = request.headers.get("content-length", "")
    if not declared.isdigit():
        raise PageError("send the image with its length (Content-Length)", "image", 411)
    if int(declared) > MAX_BYTES + 64 * 1024:
        raise PageError(
            f"the upload is {int(declared) / 1024 / 1024:.1f} MB; an image may be up to {MAX_BYTES // 1024 // 1024} MB",
            "image",
            413,
        )


@router.post("/heatmaps/screenshot")
async def upload_screenshot(
    request: Request, _: Annotated[None, Depends(_bounded_upload)], session: Editor
) -> Response:
    """Keeps an image of the page (PNG, JPEG or WebP) to draw its clicks over."""
    form = await request.form()
    path, band = _page_and_band(form)
    query = urlencode({"page": path, "band": band})
    if form.get("delete"):
        delete_screenshot(store_of(request), path, band)
        log.info("heatmap screenshot of %s (%s) removed by %s", path, band, session.user.email)
        return RedirectResponse(f"/heatmaps?{query}", status_code=303)
    upload = form.get("image")
    data = await upload.read() if isinstance(upload, UploadFile) else b""
    try:
        if not data:
            raise ScreenshotError("choose an image of the page (PNG, JPEG or WebP)")
        save_screenshot(store_of(request), path, band, data, session.user.email)
    except ScreenshotError as exc:
        values = _data(request, path, band)
        values["upload_error"] = str(exc)
        return page(request, "heatmaps.html", values, status=400, active="heatmaps")
    log.info("heatmap screenshot of %s (%s) uploaded by %s", path, band, session.user.email)
    return RedirectResponse(f"/heatmaps?{query}", status_code=303)


@router.get("/heatmaps/screenshot")
def screenshot_file(request: Request, session: Viewer) -> Response:
    """The uploaded image of ``page`` at ``band`` (the home page on desktop by default)."""
    path, band = _page_and_band(request.query_params)
    found = screenshot_image(store_of(request), path, band)
    if found is None:
        raise PageError(f"no screenshot of {path} on {band} has been uploaded", "page", 404)
    kind, data = found
    response = Response(data, media_type=kind, headers={"Cache-Control": "private, no-cache"})
    secure_headers(response.headers)
    return response
