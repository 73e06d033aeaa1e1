"""Opportunities: planned from a pain point on the journey map, with an owner, a priority and a
status; shown on the map's opportunities lane (saying whether the pain point is still found in
the period shown), on the Opportunities page and its twin, and in the exports; bad input named;
viewers read, editors change. On the demo's data, both stores."""

from __future__ import annotations

import re
from html import unescape
from typing import Any

import httpx

from percorso.web.dashboard.users import add_user
from tests.conftest import LiveServer
from tests.test_dashboard import ADMIN, EDITOR, signed_in, site

__all__ = ["site"]  # the demo site fixture, shared with the dashboard tests

VIEWER = ("vera@example.it", "a viewer's long secret")


def csrf(client: httpx.Client, path: str = "/opportunities") -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', client.get(path).text)
    assert found
    return found.group(1)


def test_an_opportunity_planned_from_a_pain_point(site: LiveServer) -> None:
    editor = signed_in(site, EDITOR)
    add_user(site.store, VIEWER[0], VIEWER[1], role="viewer")
    viewer = signed_in(site, VIEWER)
    try:
        jmap = editor.get("/map.json").json()["map"]
        stage, pain = next((s["stage"], p) for s in jmap["stages"] for p in s["pain_points"])
        page = editor.get("/map").text
        assert f'data-plan="{pain["key"]}"' in page  # each pain point offers "Plan a fix"
        assert "data-plan=" not in viewer.get("/map").text

        form: dict[str, Any] = {
            "journey": jmap["journey"],
            "stage": stage,
            "pain_key": pain["key"],
            "pain_summary": pain["summary"],
            "title": "  Show the delivery cost   before checkout ",
            "owner": ADMIN[0],
            "priority": "high",
            "next": "/map",
        }
        r = editor.post("/map/opportunities", data={**form, "csrf_token": csrf(editor)})
        assert r.status_code == 303 and r.headers["location"] == "/map"

        # On the map: in the stage's lane, its pain point still found in this period.
        planned = editor.get("/map.json").json()["map"]["opportunities_by_stage"][stage]
        assert len(planned) == 1
        o = planned[0]
        assert (o["title"], o["owner"], o["priority"], o["status"]) == (
            "Show the delivery cost before checkout",
            ADMIN[0],
            "high",
            "idea",
        )
        assert o["pain_key"] == pain["key"] and o["pain_found"] is True and o["created_by"] == EDITOR[0]
        lane = viewer.get("/map").text
        assert f'data-opportunity="{o["id"]}"' in lane and 'data-pain-found="yes"' in lane
        # A period without the pain point says it is not found there.
        empty = viewer.get("/map.json", params={"from": "2001-01-01", "to": "2001-01-31"}).json()
        assert empty["map"]["opportunities_by_stage"][stage][0]["pain_found"] is False

        # On the Opportunities page (open ones by default) and its twin, in Italian too.
        listed = viewer.get("/opportunities.json").json()
        assert [x["id"] for x in listed["opportunities"]] == [o["id"]]
        viewer.cookies.set("percorso_lang", "it")
        italian = viewer.get("/opportunities").text
        assert (
            "Responsabile" in italian
            and ">alta<" in italian
            and "Show the delivery cost before checkout" in italian
        )
        assert 'class="inline opp-edit"' not in italian  # viewers read only

        # In the exports.
        assert "Show the delivery cost before checkout" in editor.get("/map/export.html").text
        assert "[idea] Show the delivery" in editor.get("/map/export.svg").text  # wrapped to its column
        rows = editor.get("/map/export.csv").text.splitlines()
        header = rows[0].split(",")
        line = next(r.split(",") for r in rows[1:] if r.startswith(stage + ","))
        assert line[header.index("open_opportunities")] == "1"

        # Done: no longer open; listed under done; struck through on the map's lane.
        r = editor.post(
            f"/opportunities/{o['id']}",
            data={
                "status": "done",
                "priority": "high",
                "owner": EDITOR[0],
                "csrf_token": csrf(editor),
                "next": "/opportunities",
            },
        )
        assert r.status_code == 303
        assert editor.get("/opportunities.json").json()["opportunities"] == []
        done = editor.get("/opportunities.json", params={"status": "done"}).json()["opportunities"]
        assert [(x["id"], x["owner"], x["status"]) for x in done] == [(o["id"], EDITOR[0], "done")]
        assert 'class="opportunity status-done"' in editor.get("/map").text

        # Bad input: named, nothing kept.
        token = csrf(editor)
        for change, field, says in (
            ({"priority": "urgent"}, "priority", "priority is one of high, medium, low"),
            ({"owner": "someone@else.example"}, "owner", "is not a user of this dashboard"),
            ({"title": "   "}, "title", "say what the opportunity is"),
            ({"stage": "nirvana"}, "stage", "has no stage 'nirvana'"),
            ({"title": "x" * 301}, "title", "at most 300 characters"),
        ):
            r = editor.post("/map/opportunities", data={**form, **change, "csrf_token": token})
            assert (
                r.status_code == 400 and f'data-error-field="{field}"' in r.text and says in unescape(r.text)
            ), (
                change,
                r.text[:300],
            )
        r = editor.post("/map/opportunities", data={**form, "journey": "nowhere", "csrf_token": token})
        assert r.status_code == 404
        r = editor.post("/opportunities/nope", data={"status": "done", "csrf_token": token})
        assert r.status_code == 404
        r = editor.post(f"/opportunities/{o['id']}", data={"status": "finished", "csrf_token": token})
        assert r.status_code == 400 and "status is one of" in r.text
        r = editor.post(f"/opportunities/{o['id']}", data={"colour": "red", "csrf_token": token})
        assert r.status_code == 400 and "'colour' is not a field" in unescape(r.text)
        bad = editor.get("/opportunities.json", params={"status": "someday"})
        assert bad.status_code == 400 and bad.json()["field"] == "status"
        assert len(editor.get("/opportunities.json", params={"status": "all"}).json()["opportunities"]) == 1
        # Viewers cannot plan or change.
        vtoken = csrf(viewer)
        assert viewer.post("/map/opportunities", data={**form, "csrf_token": vtoken}).status_code == 403
        assert (
            viewer.post(
                f"/opportunities/{o['id']}", data={"status": "idea", "csrf_token": vtoken}
            ).status_code
            == 403
        )
    finally:
        editor.close()
        viewer.close()
