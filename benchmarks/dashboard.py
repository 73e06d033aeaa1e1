"""Dashboard page times on the demo data: ``python -m benchmarks.dashboard [--contacts N] [--quick]``.

Loads the demo (20,000 contacts ≈ 1M events by default) into an embedded store, then starts two
real ``percorso serve`` processes on it in turn and times each page over loopback HTTP, signed in:

* **cached** — the server as shipped (results kept ``PERCORSO_DASHBOARD_CACHE_SECONDS``=60 s):
  one request to fill the cache, then ``--repeat`` timed requests;
* **uncached** — ``PERCORSO_DASHBOARD_CACHE_SECONDS=0``: every request runs its analytics in the
  store, which is what the first visitor after a change (or after 60 s) waits for.

The time is the client's, request sent to last byte received, over loopback: server time plus a
fraction of a millisecond. Results go to ``benchmarks/results/dashboard.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.__main__ import RESULTS, Server, machine

USER = ("bench@example.it", "benchmark password")
PAGES = [
    "/",
    "/map",
    "/map?persona=loyal-customer",
    "/map?channel=store",
    "/funnels?funnel=checkout",
    "/funnels?funnel=checkout&dropped=2",
    "/paths",
    "/contacts",
    "/contacts/{contact}",
    "/automations",
    "/map/export.svg",
    "/map/export.pdf",
]


def prepare(data_dir: Path, contacts: int) -> dict[str, Any]:
    from percorso.config import Settings
    from percorso.demo.command import demo_journey, load_demo
    from percorso.demo.generator import DemoSpec
    from percorso.store import open_store
    from percorso.web.dashboard.users import add_user

    store = open_store(Settings(data_dir=data_dir))
    try:
        loaded = load_demo(store, DemoSpec(contacts=contacts))
        demo_journey(store)
        add_user(store, USER[0], USER[1], role="admin")
        counts = store.counts()
        with store.session() as s:
            contact = s.rows(
                "SELECT contact_id FROM contacts WHERE merged_into IS NULL ORDER BY contact_id LIMIT 1"
            )[0][0]
    finally:
        store.close()
    return {**counts, "load_seconds": loaded["seconds"], "contact": int(contact)}


def serve(data_dir: Path, port: int, cache_seconds: int) -> Server:
    env = {
        **os.environ,
        "PERCORSO_DATA_DIR": str(data_dir),
        "PERCORSO_AUTOMATION_WORKER": "0",
        "PERCORSO_STAGE_INTERVAL": "0",
        "PERCORSO_DASHBOARD_CACHE_SECONDS": str(cache_seconds),
    }
    return Server(env, port)


def time_pages(port: int, contact: int, repeat: int, warm_first: bool) -> dict[str, Any]:
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text)
    assert token, "the sign-in form has no csrf_token"
    r = client.post("/login", data={"email": USER[0], "password": USER[1], "csrf_token": token.group(1)})
    assert r.status_code == 303, r.text
    out: dict[str, Any] = {}
    for template in PAGES:
        path = template.format(contact=contact)
        if warm_first:
            client.get(path)
        seconds = []
        for _ in range(repeat):
            started = time.perf_counter()
            response = client.get(path)
            seconds.append(time.perf_counter() - started)
            if response.status_code != 200:
                raise RuntimeError(f"{path}: HTTP {response.status_code}: {response.text[:300]}")
        seconds.sort()
        out[template] = {
            "median_ms": round(statistics.median(seconds) * 1000, 1),
            "p95_ms": round(seconds[min(len(seconds) - 1, int(len(seconds) * 0.95))] * 1000, 1),
            "max_ms": round(seconds[-1] * 1000, 1),
            "requests": repeat,
        }
        print(
            f"  {template:40s} median {out[template]['median_ms']:8.1f} ms   max {out[template]['max_ms']:8.1f} ms"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--contacts", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true", help="2,000 contacts, fewer repeats")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    contacts = 2_000 if args.quick else args.contacts
    repeat = 5 if args.quick else args.repeat
    result: dict[str, Any] = {"benchmark": "dashboard", "machine": machine(), "command": " ".join(sys.argv)}
    with tempfile.TemporaryDirectory(prefix="percorso-bench-") as tmp:
        data_dir = Path(tmp)
        print(f"loading the demo with {contacts:,} contacts …")
        result["data"] = prepare(data_dir, contacts)
        print(f"  {result['data']['events']:,} events, {result['data']['contacts']:,} contacts")
        for mode, cache, warm in (("cached", 60, True), ("uncached", 0, False)):
            print(f"{mode}:")
            port = 8900 if mode == "cached" else 8901
            server = serve(data_dir, port, cache)
            try:
                load_before = os.getloadavg()
                result[mode] = time_pages(
                    port, result["data"]["contact"], repeat if warm else max(3, repeat // 4), warm
                )
                result[mode + "_loadavg"] = [round(v, 2) for v in (*load_before, *os.getloadavg())]
            finally:
                server.stop()
            RESULTS.mkdir(exist_ok=True)
            (RESULTS / "dashboard.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"results in {RESULTS / 'dashboard.json'}")


if __name__ == "__main__":
    main()
