"""Heatmaps computed in the store on both engines, from clicks and scroll depths sent as
percorso.js sends them (the browser side is in test_tracker_browser.py)."""

from __future__ import annotations

from typing import Any

from tests.conftest import LiveServer


def test_heatmap_numbers_worked_out_by_hand(server: LiveServer) -> None:
    """Clicks sent as percorso.js sends them; the grid, the elements and the scroll map computed
    in the store equal what the test works out."""
    clicks = [
        # x, y, width, selector, rage, dead
        (50, 10, 1000, "#buy", False, False),  # column 1 (50/1000*20), row 0
        (60, 20, 1000, "#buy", False, False),  # column 1, row 0
        (999, 120, 1000, "#help", True, True),  # column 19, row 2
        (1000, 120, 1000, "#help", True, True),  # x = width: last column, row 2
        (200, 75, 400, "div.price", False, True),  # column 10, row 1
    ]
    batch = [
        {"type": "track", "event": "Heatmap Click", "anonymousId": f"h{i}", "context": {"page": {"path": "/checkout"}},
         "properties": {"x": x, "y": y, "width": w, "height": 2000, "selector": sel, "rage": rage, "dead": dead, "band": "desktop"}}
        for i, (x, y, w, sel, rage, dead) in enumerate(clicks)
    ]  # fmt: skip
    batch.append({"type": "track", "event": "Heatmap Click", "anonymousId": "m", "context": {"page": {"path": "/checkout"}},
                  "properties": {"x": 5, "y": 5, "width": 300, "selector": "#buy", "band": "mobile"}})  # fmt: skip
    batch.append({"type": "track", "event": "Heatmap Click", "anonymousId": "o", "context": {"page": {"path": "/other"}},
                  "properties": {"x": 5, "y": 5, "width": 300, "selector": "#x", "band": "desktop"}})  # fmt: skip
    for i, depth in enumerate((100, 55, 30)):
        batch.append({"type": "track", "event": "Page Scrolled", "anonymousId": f"s{i}",
                      "context": {"page": {"path": "/checkout"}}, "properties": {"depth": depth, "band": "desktop"}})  # fmt: skip
    with server.client(server.write_key) as writer:
        assert writer.post("/v1/batch", json={"batch": batch}).json()["stored"] == len(batch)
    with server.client() as api:
        result = api.get("/v1/heatmaps", params={"page": "/check*", "band": "desktop"}).json()
        everyone = api.get("/v1/heatmaps", params={"page": "/checkout"}).json()
        bad = api.get("/v1/heatmaps", params={"page": "/checkout", "band": "watch"})
    assert (result["clicks"], result["rage_clicks"], result["dead_clicks"]) == (5, 2, 3)
    cells = {(c["column"], c["row"]): c["clicks"] for c in result["grid"]["cells"]}
    assert cells == {(1, 0): 2, (19, 2): 2, (10, 1): 1}
    assert result["elements"][:2] == [
        {"selector": "#buy", "clicks": 2, "rage_clicks": 0, "dead_clicks": 0},
        {"selector": "#help", "clicks": 2, "rage_clicks": 2, "dead_clicks": 2},
    ]
    reached = {r["depth"]: r["share"] for r in result["scroll"]["reached"]}
    assert result["scroll"]["page_views"] == 3
    assert (reached[30], reached[40], reached[60], reached[100]) == (
        1.0,
        round(2 / 3, 4),
        round(1 / 3, 4),
        round(1 / 3, 4),
    )
    assert everyone["clicks"] == 6  # the mobile click too, without a band
    assert bad.status_code == 400 and bad.json()["field"] == "band"


def test_the_heatmap_page_and_its_twin(server: LiveServer) -> None:
    from percorso.web.dashboard.users import add_user
    from tests.test_dashboard import signed_in

    batch = [
        {"type": "track", "event": "Heatmap Click", "anonymousId": f"v{i}", "context": {"page": {"path": "/checkout"}},
         "properties": {"x": 100 * i, "y": 60, "width": 1200, "selector": "#pay" if i % 2 else "h1", "dead": i % 2 == 0, "rage": False, "band": "desktop"}}
        for i in range(6)
    ]  # fmt: skip
    with server.client(server.write_key) as writer:
        assert writer.post("/v1/batch", json={"batch": batch}).json()["stored"] == 6
    server.store.create_api_key("write", "shop", ["https://shop.example"])
    with server.client() as api:
        expected = api.get("/v1/heatmaps", params={"page": "/checkout", "band": "desktop"}).json()
    add_user(server.store, "anna@example.it", "a long enough secret", role="viewer")
    dashboard = signed_in(server, ("anna@example.it", "a long enough secret"))
    try:
        twin = dashboard.get("/heatmaps.json", params={"page": "/checkout", "band": "desktop"}).json()
        assert (
            twin["result"]["grid"] == expected["grid"] and twin["result"]["elements"] == expected["elements"]
        )
        assert twin["result"]["dead_clicks"] == 3
        # The page beneath: the write key's origin and the page's path, in a sandboxed frame.
        assert twin["site"] == "https://shop.example/checkout"
        dashboard.cookies.set("percorso_lang", "it")
        page = dashboard.get("/heatmaps", params={"page": "/checkout"}).text
        assert '<iframe src="https://shop.example/checkout" sandbox=""' in page and "clic a vuoto" in page
        assert (
            "frame-src 'self' http: https:" in dashboard.get("/heatmaps").headers["content-security-policy"]
        )
        assert dashboard.get("/heatmaps", params={"band": "watch"}).status_code == 400
        assert dashboard.get("/heatmaps", params={"site": "javascript:alert(1)"}).status_code == 400
        assert dashboard.get("/heatmaps.json", params={"page": "/*"}).json()["site"] is None
    finally:
        dashboard.close()


def test_clicks_stored_before_the_typed_copy_are_copied_by_the_migration(server: LiveServer) -> None:
    """Migration 11 copies the clicks stored before it into heatmap_clicks: the heatmap is the
    same after the upgrade as for clicks sent after it. A retried click is copied once."""
    click = {"type": "track", "event": "Heatmap Click", "anonymousId": "old", "messageId": "old-1",
             "context": {"page": {"path": "/old"}},
             "properties": {"x": 10, "y": 10, "width": 100, "selector": "#a", "rage": True, "band": "desktop"}}  # fmt: skip
    with server.client(server.write_key) as writer:
        assert writer.post("/v1/track", json=click).status_code == 200
        assert writer.post("/v1/track", json=click).status_code == 200  # the retry stores nothing
    with server.client() as api:
        period = {"page": "/old", "from": "2020-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"}
        before = api.get("/v1/heatmaps", params=period).json()
    assert (before["clicks"], before["rage_clicks"]) == (1, 1)
    store = server.store
    with store.session() as s:  # as a store was before migration 11
        s.execute("DROP TABLE heatmap_clicks")
        s.execute("DELETE FROM schema_migrations WHERE version = 11")
    store.migrate()
    with server.client() as api:
        after = api.get("/v1/heatmaps", params=period).json()
    assert after == before


def png(width: int, height: int) -> bytes:
    """A real PNG (one grey colour), written with the standard library."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def test_image_sizes_are_read_from_the_image_itself() -> None:
    import pytest

    from percorso.analytics.screenshots import ScreenshotError, image_size

    assert image_size(png(1200, 3400)) == ("image/png", 1200, 3400)
    # A baseline JPEG: SOI, an APP0 segment, then the frame header with height 900 and width 390.
    jpeg = b"\xff\xd8" + b"\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    jpeg += b"\xff\xc0\x00\x11\x08\x03\x84\x01\x86\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01" + b"\xff\xd9"
    assert image_size(jpeg) == ("image/jpeg", 390, 900)
    # WebP, extended header: width - 1 and height - 1 in 24 bits each.
    webp = b"RIFF" + (30).to_bytes(4, "little") + b"WEBPVP8X" + (10).to_bytes(4, "little") + b"\x00" * 4
    webp += (799).to_bytes(3, "little") + (2399).to_bytes(3, "little")
    assert image_size(webp) == ("image/webp", 800, 2400)
    for data, reason in (
        (b"", "empty"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "not a PNG, JPEG or WebP"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "no frame header"),
        (png(1, 1)[:16] + (40_000).to_bytes(4, "big") + (10).to_bytes(4, "big"), "40000 × 10 pixels"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "WebP image is damaged"),
    ):
        with pytest.raises(ScreenshotError, match=reason):
            image_size(data)


def test_a_screenshot_uploaded_beneath_the_clicks(server: LiveServer) -> None:
    """An editor uploads a screenshot of a page for a band; every viewer sees it beneath that
    page's clicks (the same bytes back), the twin says what it is; bad uploads are refused with
    the reason and leave the kept image alone; a viewer may look but not upload."""
    import re

    from percorso.web.dashboard.users import add_user
    from tests.test_dashboard import signed_in

    add_user(server.store, "eva@example.it", "a long enough secret", role="editor")
    add_user(server.store, "vito@example.it", "another long secret", role="viewer")
    editor = signed_in(server, ("eva@example.it", "a long enough secret"))
    viewer = signed_in(server, ("vito@example.it", "another long secret"))

    def csrf(client: Any) -> str:
        found = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/heatmaps").text)
        assert found
        return found.group(1)

    def upload(client: Any, data: bytes, **fields: str) -> Any:
        form = {"csrf_token": csrf(client), "page": "/checkout", "band": "desktop", **fields}
        return client.post(
            "/heatmaps/screenshot", data=form, files={"image": ("shot.png", data, "image/png")}
        )

    try:
        query = {"page": "/checkout", "band": "desktop"}
        assert editor.get("/heatmaps.json", params=query).json()["screenshot"] is None
        assert viewer.get("/heatmaps/screenshot", params=query).status_code == 404
        image = png(1200, 1800)
        r = upload(editor, image)
        assert r.status_code == 303 and r.headers["location"] == "/heatmaps?page=%2Fcheckout&band=desktop"
        twin = viewer.get("/heatmaps.json", params=query).json()
        shot = twin["screenshot"]
        assert (shot["width"], shot["height"], shot["bytes"], shot["uploaded_by"]) == (
            1200,
            1800,
            len(image),
            "eva@example.it",
        )
        assert shot["drawn_height"] == 1800 and shot["scaled"] is False and twin["site"] is None
        assert twin["rows"] == 36  # the stage is as tall as the image: 1,800 px in 50-pixel rows
        got = viewer.get(shot["url"])
        assert got.content == image and got.headers["content-type"] == "image/png"
        assert got.headers["x-content-type-options"] == "nosniff"
        html = viewer.get("/heatmaps", params=query).text
        assert f'<img id="heat-screenshot" src="{shot["url"].replace("&", "&amp;")}"' in html
        assert 'id="screenshot-form"' not in html  # a viewer cannot upload
        assert 'id="screenshot-form"' in editor.get("/heatmaps", params=query).text
        # Another band of the same page has none; the mobile one is drawn scaled to 390 px.
        assert viewer.get("/heatmaps.json", params={**query, "band": "tablet"}).json()["screenshot"] is None
        assert upload(editor, png(780, 2000), band="mobile").status_code == 303
        mobile = viewer.get("/heatmaps.json", params={**query, "band": "mobile"}).json()["screenshot"]
        assert (mobile["drawn_height"], mobile["scaled"]) == (1000, True)
        editor.cookies.set("percorso_lang", "it")
        assert "è disegnata a 390 px" in editor.get("/heatmaps", params={**query, "band": "mobile"}).text
        editor.cookies.set("percorso_lang", "en")

        # Refused, with the reason, and the kept image is still the one shown.
        bad = upload(editor, b"GIF89a not what we keep")
        assert bad.status_code == 400 and "not a PNG, JPEG or WebP image" in bad.text
        assert upload(editor, b"").status_code == 400
        assert "band is one of desktop, tablet, mobile" in upload(editor, image, band="watch").text
        assert upload(editor, image, page="checkout").status_code == 400
        huge = editor.post(
            "/heatmaps/screenshot",
            content=b"x" * (11 * 1024 * 1024),
            headers={"content-type": "multipart/form-data; boundary=b"},
        )
        assert huge.status_code == 413 and "an image may be up to 10 MB" in huge.text
        assert upload(viewer, image).status_code == 403
        no_csrf = editor.post(
            "/heatmaps/screenshot", data=query, files={"image": ("s.png", image, "image/png")}
        )
        assert no_csrf.status_code == 403
        assert viewer.get(shot["url"]).content == image

        # Removed: the page goes back to its live page (none here) and the image is gone.
        assert upload(editor, b"", delete="1").status_code == 303
        assert viewer.get("/heatmaps.json", params=query).json()["screenshot"] is None
        assert viewer.get(shot["url"]).status_code == 404
    finally:
        editor.close()
        viewer.close()
