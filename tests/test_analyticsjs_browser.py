"""analytics.js works unchanged: the official ``@segment/analytics-next`` bundle (from npm, see
tests/browser/package.json), loaded by a page on another localhost origin in Debian's Chromium,
pointed at percorso with nothing but its ``cdnURL``. It fetches its settings from percorso, sends
every call to analytics.js' short paths with its Authorization header (a CORS preflight first),
and every call is in the store, on both stores. ``sendBeacon`` and ``fetch(keepalive)`` bodies
arrive too. A page on an origin the write key does not allow stores nothing."""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from percorso.store import Store
from tests.conftest import IN_CI, LiveServer, static_sites

BUNDLE = (
    Path(__file__).parent
    / "browser"
    / "node_modules"
    / "@segment"
    / "analytics-next"
    / "dist"
    / "umd"
    / "index.js"
)

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Shop</title><script src="/ajs.js"></script></head>
<body><h1>Shop</h1>
<script>
window.sendAll = async (writeKey, cdn) => {
  const timeout = new Promise((_, reject) => setTimeout(() => reject(new Error("load timed out")), 15000));
  const [analytics] = await Promise.race([AnalyticsNext.AnalyticsBrowser.load({ writeKey, cdnURL: cdn }), timeout]);
  const calls = [
    () => analytics.page("Pricing", { plan: "pro" }),
    () => analytics.track("Signed Up", { plan: "pro", price: 12.5 }),
    () => analytics.identify("u-42", { email: "giulia@example.it", firstName: "Giulia" }),
    () => analytics.group("acme", { name: "Acme" }),
    () => analytics.alias("u-43", "u-42"),
  ];
  const sent = [];
  for (const call of calls) {
    const ctx = await Promise.race([call(), timeout]);
    sent.push({ id: ctx.event.messageId, type: ctx.event.type, failed: ctx.failedDelivery() ? String(ctx.failedDelivery().reason) : null });
  }
  return { anonymousId: analytics.user().anonymousId(), sent };
};
window.sendRaw = async (url, writeKey) => {
  const beacon = { writeKey, anonymousId: "beacon-visitor", event: "Left Page", messageId: "beacon-" + Math.random() };
  const keep = { writeKey, anonymousId: "beacon-visitor", event: "Closed Tab", messageId: "keepalive-" + Math.random() };
  const queued = navigator.sendBeacon(url + "/v1/t", JSON.stringify(beacon));
  let status = null;
  try {
    const r = await fetch(url + "/v1/t", { method: "POST", keepalive: true, body: JSON.stringify(keep), headers: { "Content-Type": "text/plain" } });
    status = r.status;
  } catch (e) { status = "blocked"; }
  return { queued, status, ids: [beacon.messageId, keep.messageId] };
};
</script></body></html>
"""


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Two static sites on their own localhost ports: the shop the key allows, and another."""
    if not BUNDLE.exists():
        if IN_CI:
            pytest.fail(f"{BUNDLE} is missing: `make browser-libs` installs it from npm")
        pytest.skip("analytics-next is not installed (make browser-libs)")
    root = tmp_path_factory.mktemp("shop")
    (root / "index.html").write_text(PAGE, encoding="utf-8")
    shutil.copy(BUNDLE, root / "ajs.js")
    with static_sites(root, 2) as origins:
        yield origins


def stored(store: Store, ids: list[str], timeout: float = 10.0) -> dict[str, str]:
    """The type of each of ``ids`` found in the store, waiting for them a while."""
    found: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with store.session() as s:
            marks = ", ".join("?" for _ in ids)
            found = dict(s.rows(f"SELECT message_id, type FROM events WHERE message_id IN ({marks})", ids))
        if len(found) == len(ids):
            break
        time.sleep(0.1)
    return found


def test_analytics_next_from_another_origin_stores_every_call(
    server: LiveServer, shop: list[str], chromium: Any
) -> None:
    allowed, _ = shop
    _, write_key = server.store.create_api_key("write", "shop", [allowed])
    context = chromium.new_context()
    page = context.new_page()
    requests: list[tuple[str, str]] = []
    page.on("request", lambda r: requests.append((r.method, r.url)) if r.url.startswith(server.url) else None)
    page.goto(allowed + "/index.html")
    result = page.evaluate("([key, cdn]) => window.sendAll(key, cdn)", [write_key, server.url])
    sent = result["sent"]
    assert [c["failed"] for c in sent] == [None] * 5, sent
    found = stored(server.store, [c["id"] for c in sent])
    assert found == {c["id"]: c["type"] for c in sent}
    assert sorted(found.values()) == ["alias", "group", "identify", "page", "track"]

    # What went over the wire: the settings from percorso, a preflight, the short paths.
    paths = {(m, u.removeprefix(server.url).split("?")[0]) for m, u in requests}
    assert ("GET", f"/v1/projects/{write_key}/settings") in paths
    assert {("POST", p) for p in ("/v1/p", "/v1/t", "/v1/i", "/v1/g", "/v1/a")} <= paths, paths

    # The anonymous page view and track belong to the contact the identify named.
    with server.client() as api:
        contact = api.get("/v1/contacts/lookup", params={"userId": "u-42"}).json()
        assert contact["traits"]["email"] == "giulia@example.it"
        events = api.get(f"/v1/contacts/{contact['id']}/timeline").json()["events"]
    assert {e["messageId"] for e in events} >= {sent[0]["id"], sent[1]["id"], sent[2]["id"]}
    track = next(e for e in events if e["messageId"] == sent[1]["id"])
    assert track["anonymousId"] == result["anonymousId"] and track["properties"] == {
        "plan": "pro",
        "price": 12.5,
    }
    assert track["context"]["library"]["name"] == "analytics.js"

    # sendBeacon and fetch(keepalive) with text/plain bodies and the key in the body.
    raw = page.evaluate("([url, key]) => window.sendRaw(url, key)", [server.url, write_key])
    assert raw["queued"] is True and raw["status"] == 200, raw
    assert set(stored(server.store, raw["ids"])) == set(raw["ids"])
    context.close()


def test_a_page_on_an_origin_the_key_does_not_allow_stores_nothing(
    server: LiveServer, shop: list[str], chromium: Any
) -> None:
    allowed, other = shop
    _, write_key = server.store.create_api_key("write", "shop", [allowed])
    context = chromium.new_context()
    page = context.new_page()
    page.goto(other + "/index.html")
    before = server.store.counts()["events"]
    try:
        page.evaluate("([key, cdn]) => window.sendAll(key, cdn)", [write_key, server.url])
    except Exception as exc:  # the settings cannot be read from this origin: the library gives up
        assert "load timed out" in str(exc) or "Failed" in str(exc) or "Error" in str(exc)
    raw = page.evaluate("([url, key]) => window.sendRaw(url, key)", [server.url, write_key])
    # sendBeacon needs no preflight, so it reached the server, which refused it by its origin.
    assert raw["queued"] is True and raw["status"] == "blocked", raw
    time.sleep(1.0)
    assert server.store.counts()["events"] == before
    context.close()


def test_preflight_and_origin_answers(server: LiveServer, shop: list[str]) -> None:
    """What the browser is told, as plain HTTP: a preflight answered only for allowed origins,
    the key's own list checked on the request itself, the message naming the fix."""
    import httpx

    allowed, other = shop
    _, write_key = server.store.create_api_key("write", "shop", [allowed])
    _, anywhere = server.store.create_api_key("write", "widget", ["*"])
    ask = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    with httpx.Client(base_url=server.url, timeout=10) as http:
        ok = http.options("/v1/t", headers={"Origin": allowed, **ask})
        assert ok.status_code == 204 and ok.headers["access-control-allow-origin"] == allowed
        assert "authorization" in ok.headers["access-control-allow-headers"].lower()
        # "*" on one key lets any origin's preflight through; that key alone then accepts it.
        anyone = http.options("/v1/batch", headers={"Origin": "https://elsewhere.example", **ask})
        assert anyone.status_code == 204
        body = {"event": "Tried", "anonymousId": "a1", "messageId": str(uuid.uuid4())}
        refused = http.post("/v1/t", json={**body, "writeKey": write_key}, headers={"Origin": other})
        assert refused.status_code == 403 and refused.json()["code"] == "origin_not_allowed"
        assert "percorso keys origins" in refused.json()["message"]
        fine = http.post("/v1/t", json={**body, "writeKey": anywhere}, headers={"Origin": other})
        assert fine.status_code == 200 and fine.headers["access-control-allow-origin"] == other
        # Server-side libraries send no Origin: unaffected.
        assert (
            http.post("/v1/track", json={**body, "messageId": "srv"}, auth=(write_key, "")).status_code == 200
        )


def test_origins_over_the_api(server: LiveServer) -> None:
    with server.client() as api:
        created = api.post(
            "/v1/keys", json={"kind": "write", "name": "shop", "origins": ["https://Shop.Example"]}
        )
        assert created.status_code == 201 and created.json()["origins"] == ["https://shop.example"]
        key_id = created.json()["id"]
        bad = api.post(
            "/v1/keys", json={"kind": "write", "name": "x", "origins": ["https://shop.example/path"]}
        )
        assert (
            bad.status_code == 400 and bad.json()["field"] == "origins" and "no path" in bad.json()["message"]
        )
        put = api.put(f"/v1/keys/{key_id}/origins", json={"origins": ["http://localhost:3000", "*"]})
        assert put.status_code == 200 and put.json()["origins"] == ["http://localhost:3000", "*"]
        listed = {k["id"]: k["origins"] for k in api.get("/v1/keys").json()["keys"]}
        assert listed[key_id] == ["http://localhost:3000", "*"]
        assert api.put("/v1/keys/wk_none/origins", json={"origins": []}).status_code == 404
    # A settings request for a key that is not an active write key is a 404, as Segment's CDN answers.
    with server.client() as http:
        assert http.get(f"/v1/projects/{created.json()['key']}/settings").status_code == 200
        assert http.get("/v1/projects/wk_unknown/settings").status_code == 404
        assert http.get(f"/v1/projects/{server.secret_key}/settings").status_code == 404
