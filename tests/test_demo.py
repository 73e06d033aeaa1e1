"""``percorso demo``: loads the generated data through the ingestion path and serves it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import httpx
import pytest

from percorso.demo.command import load_demo
from percorso.demo.generator import DemoSpec, stories
from tests.conftest import free_port


def test_demo_data_loads_on_both_engines_and_the_stories_are_there(store):
    spec = DemoSpec(contacts=300, seed=11)
    result = load_demo(store, spec)
    assert result["rejected"] == [] and result["stored"] > 300 * 20
    counts = store.counts()
    assert counts["events"] == result["stored"]
    # Anonymous visitors identify later: fewer contacts than identifiers.
    assert counts["contacts"] < counts["identities"]
    from percorso.store.contacts import contact_profile, contact_timeline, find_contact

    for story in stories(spec):
        kind, value = ("email", story.email) if story.email else ("anonymous_id", story.anonymous_id)
        profile = contact_profile(store, find_contact(store, kind, value))
        names = [e.get("event") for e in contact_timeline(store, profile["id"], limit=1000)["events"]]
        if story.key == "registered_not_confirmed":
            assert "Registration Submitted" in names and "Registration Confirmed" not in names
            assert any(i["kind"] == "anonymous_id" for i in profile["identifiers"])
        elif story.key == "abandoned_registration":
            assert "Registration Started" in names and "Registration Submitted" not in names
        else:
            assert names.count("Order Completed") >= 3 and "Membership Confirmed" not in names
    # Re-loading the same spec stores nothing twice.
    assert load_demo(store, spec)["stored"] == 0


@pytest.mark.slow
def test_demo_command_loads_and_serves(tmp_path):
    port, shop_port = free_port(), free_port()
    env = {**os.environ, "PERCORSO_DATA_DIR": str(tmp_path), "COLUMNS": "200"}
    # On every interface, as on a machine others open the demo from: the addresses printed are
    # ones a browser can open, and the shop works by each name it is reached by.
    command = [
        "demo",
        "--contacts",
        "200",
        "--host",
        "0.0.0.0",
        "--port",
        str(port),
        "--shop-port",
        str(shop_port),
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "percorso", *command],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = ""
    try:
        deadline = time.monotonic() + 120
        assert proc.stdout is not None
        while "serving on" not in output:
            line = proc.stdout.readline()
            assert line, f"demo exited early:\n{output}"
            output += line
            assert time.monotonic() < deadline, output
        secret = re.search(r"secret key\s+(sk_\S+)", output).group(1)  # type: ignore[union-attr]
        email = re.search(r"lookup\?email=(\S+?)'", output).group(1)  # type: ignore[union-attr]
        for _ in range(100):
            try:
                r = httpx.get(
                    f"http://127.0.0.1:{port}/v1/contacts/lookup", params={"email": email}, auth=(secret, "")
                )
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert r.status_code == 200 and r.json()["events"] > 0
        # The example automations ran over the last days (into the demo's own inbox when no SMTP
        # server is there), so the Automations page has numbers from the start: the person who
        # registered three days ago and never confirmed got the reminder and the follow-up.
        if "demo's own inbox" in output:
            assert re.search(r"the demo's inbox received [1-9][\d,]* emails", output), output
        reminder = httpx.get(
            f"http://127.0.0.1:{port}/v1/automations/registration-reminder/stats", auth=(secret, "")
        ).json()
        assert reminder["totals"]["enrolled"] >= 1, reminder
        laura = re.search(r"registered three days ago.*?lookup\?email=(\S+?)'", output, re.S)
        assert laura, output
        contact = httpx.get(
            f"http://127.0.0.1:{port}/v1/contacts/lookup", params={"email": laura.group(1)}, auth=(secret, "")
        ).json()["id"]
        timeline = httpx.get(
            f"http://127.0.0.1:{port}/v1/contacts/{contact}/timeline", auth=(secret, "")
        ).json()
        sent = [e for e in timeline["events"] if e.get("event") == "Email Sent"]
        assert len(sent) >= 2, [e.get("event") for e in timeline["events"]][-20:]
        # What the demo says to try works while it serves (the store is the server's): through the API.
        tried = re.search(r"journey +\S+ +\(try: curl -u (sk_\S+): '(\S+/stages)'", output)
        assert tried, output
        stages = httpx.get(
            tried.group(2).replace(printed_host(output), "127.0.0.1"), auth=(tried.group(1), "")
        )
        assert stages.status_code == 200 and stages.json()["stages"], stages.text[:300]
        # The demo shop, on its own port, loads percorso.js from the server with a key for its
        # origin: by the printed address and by the loopback names alike.
        printed = re.search(rf"shop +http://([^:/\s]+):{shop_port}/", output)
        assert printed and printed.group(1) != "0.0.0.0", output
        assert f"serving on http://{printed.group(1)}:{port}" in output
        for name in {printed.group(1), "127.0.0.1", "localhost"}:
            home = httpx.get(f"http://{name}:{shop_port}/")
            loaded = json.loads(re.search(r"percorso\.load\((\{.*?\})\);", home.text).group(1))  # type: ignore[union-attr]
            assert loaded["host"] == f"http://{name}:{port}", (name, loaded)
            assert httpx.get(f"{loaded['host']}/percorso.js").status_code == 200
            page = {
                "type": "page",
                "anonymousId": f"visitor-{name}",
                "name": "Home",
                "writeKey": loaded["writeKey"],
            }
            sent = httpx.post(
                f"{loaded['host']}/v1/p",
                content=json.dumps(page),
                headers={"content-type": "text/plain", "origin": f"http://{name}:{shop_port}"},
            )
            assert sent.status_code == 200, (name, sent.text)
            assert sent.headers["access-control-allow-origin"] == f"http://{name}:{shop_port}"
        # Any other site is still refused with the shop's key.
        refused = httpx.post(
            f"http://127.0.0.1:{port}/v1/p",
            content=json.dumps({**page, "anonymousId": "elsewhere"}),
            headers={"content-type": "text/plain", "origin": "http://elsewhere.example"},
        )
        assert refused.status_code == 403
        for name in ("127.0.0.1", "localhost"):
            found = httpx.get(
                f"http://127.0.0.1:{port}/v1/contacts/lookup",
                params={"anonymousId": f"visitor-{name}"},
                auth=(secret, ""),
            )
            assert found.status_code == 200 and found.json()["events"] == 1, (name, found.text)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def printed_host(output: str) -> str:
    """The address the demo printed for itself (the machine's, when it listens on every interface)."""
    found = re.search(r"serving on http://([^:/\s]+):", output)
    assert found, output
    return found.group(1)
