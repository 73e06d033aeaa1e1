"""Heatmaps computed in the store on both engines, from clicks and scroll depths sent as
percorso.js sends them (the browser side is in test_tracker_browser.py)."""

from __future__ import annotations

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
