"""Heatmap screenshots: an image of a page the user uploads, to draw its clicks over when the live
page cannot be framed (a page behind a sign-in, a site that forbids framing, a checkout step that
needs a cart). One image per page pattern and viewport band, kept in the store (both engines), so
every server of a PostgreSQL deployment shows it.

Only PNG, JPEG and WebP images are kept, recognised by their bytes (never by the name or the type
the browser claims), and their size is read from the image's own header: the dashboard draws the
image at the band's width and says so when it was taken at another width.
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from typing import Any

from percorso.analytics.heatmap import BANDS
from percorso.store import Store

#: The largest image kept (a full-page PNG of a long page at 1,200 px is usually 1 to 5 MB).
MAX_BYTES = 10 * 1024 * 1024
#: The largest side accepted, in pixels (a page longer than this is cut by the browser anyway).
MAX_SIDE = 30_000


class ScreenshotError(ValueError):
    """An upload that cannot be kept, with the reason a person can act on."""


def image_size(data: bytes) -> tuple[str, int, int]:
    """The media type, width and height of a PNG, JPEG or WebP image, read from its header."""
    if not data:
        raise ScreenshotError("the file is empty")
    if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        kind = "image/png"
    elif data.startswith(b"\xff\xd8"):
        width, height = _jpeg_size(data)
        kind = "image/jpeg"
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        width, height = _webp_size(data)
        kind = "image/webp"
    else:
        raise ScreenshotError("the file is not a PNG, JPEG or WebP image")
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
        raise ScreenshotError(f"the image is {width} × {height} pixels; each side must be 1 to {MAX_SIDE:,}")
    return kind, width, height


def _jpeg_size(data: bytes) -> tuple[int, int]:
    at = 2
    while at + 9 <= len(data):
        if data[at] != 0xFF:
            break
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            at += 2
            continue
        (length,) = struct.unpack(">H", data[at + 2 : at + 4])
        # Start of frame (baseline, progressive, …; not DHT C4, JPG C8 or DAC CC): height, width.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[at + 5 : at + 9])
            return int(width), int(height)
        at += 2 + length
    raise ScreenshotError("the JPEG image is damaged: no frame header was found")


def _webp_size(data: bytes) -> tuple[int, int]:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        width = 1 + int.from_bytes(data[24:27], "little")
        height = 1 + int.from_bytes(data[27:30], "little")
        return width, height
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    raise ScreenshotError("the WebP image is damaged: its size could not be read")


def _checked(page: str, band: str) -> None:
    if band not in BANDS:
        raise ScreenshotError(f"band is one of {', '.join(BANDS)}, not {band[:20]!r}")
    if not page.startswith(("/", "*")) or len(page) > 500:
        raise ScreenshotError(
            "page is a path on your site (up to 500 characters), e.g. /checkout or /products/*"
        )


def save_screenshot(store: Store, page: str, band: str, data: bytes, uploaded_by: str) -> dict[str, Any]:
    """Keeps ``data`` as the image of ``page`` at ``band``, replacing the one before."""
    _checked(page, band)
    if len(data) > MAX_BYTES:
        raise ScreenshotError(
            f"the image is {len(data) / 1024 / 1024:.1f} MB; the limit is {MAX_BYTES // 1024 // 1024} MB"
        )
    kind, width, height = image_size(data)
    now = datetime.now(UTC)
    with store.writing() as s:
        s.execute("DELETE FROM heatmap_screenshots WHERE page = ? AND band = ?", [page, band])
        s.execute(
            "INSERT INTO heatmap_screenshots (page, band, content_type, image, width, height, uploaded_by, "
            "uploaded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [page, band, kind, data, width, height, uploaded_by, now],
        )
    return {
        "page": page,
        "band": band,
        "content_type": kind,
        "width": width,
        "height": height,
        "bytes": len(data),
        "uploaded_by": uploaded_by,
        "uploaded_at": now.isoformat(),
    }


def screenshot(store: Store, page: str, band: str) -> dict[str, Any] | None:
    """What is known of the image of ``page`` at ``band`` (not the image itself), or None."""
    with store.session() as s:
        rows = s.rows(
            "SELECT content_type, width, height, octet_length(image), uploaded_by, uploaded_at "
            "FROM heatmap_screenshots WHERE page = ? AND band = ?",
            [page, band],
        )
    if not rows:
        return None
    kind, width, height, size, by, at = rows[0]
    uploaded = at if isinstance(at, datetime) else datetime.fromisoformat(str(at))
    return {
        "page": page,
        "band": band,
        "content_type": kind,
        "width": int(width),
        "height": int(height),
        "bytes": int(size),
        "uploaded_by": by,
        "uploaded_at": uploaded.astimezone(UTC).isoformat(),
    }


def screenshot_image(store: Store, page: str, band: str) -> tuple[str, bytes] | None:
    """The media type and bytes of the image of ``page`` at ``band``, or None."""
    with store.session() as s:
        rows = s.rows(
            "SELECT content_type, image FROM heatmap_screenshots WHERE page = ? AND band = ?", [page, band]
        )
    return (str(rows[0][0]), bytes(rows[0][1])) if rows else None


def delete_screenshot(store: Store, page: str, band: str) -> bool:
    """Removes the image of ``page`` at ``band``; False when there was none."""
    with store.writing() as s:
        found = s.rows("SELECT 1 FROM heatmap_screenshots WHERE page = ? AND band = ?", [page, band])
        s.execute("DELETE FROM heatmap_screenshots WHERE page = ? AND band = ?", [page, band])
    return bool(found)
