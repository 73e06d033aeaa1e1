"""Screenshots of the dashboard's main pages for the docs: ``make screenshots``.

Loads a demo store (5,000 contacts, the example automations run over its last four days, three
opportunities planned from its pain points) into a temporary directory, serves it, signs in with Chromium
(Debian's ``chromium``, or ``PERCORSO_CHROMIUM``) and writes ``docs/screenshots/*.png``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import uvicorn
from playwright.sync_api import sync_playwright

from percorso.analytics.journeymap import journey_map
from percorso.analytics.stages import get_journey
from percorso.automation.actions.email import SmtpSettings
from percorso.automation.inbox import DEMO_WEBHOOK_SECRET, WEBHOOK_SECRET_ENV, LocalInbox
from percorso.config import Settings
from percorso.demo.command import demo_journey
from percorso.demo.generator import DemoSpec
from percorso.demo.replay import replay_demo
from percorso.opportunities import add_opportunity
from percorso.store import open_store
from percorso.web.app import create_app
from percorso.web.dashboard.users import add_user


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


OUT = Path(__file__).parent.parent / "docs" / "screenshots"
USER = ("demo@percorso.local", "screenshots only")


def main() -> None:
    chromium = os.environ.get("PERCORSO_CHROMIUM") or shutil.which("chromium")
    if not chromium:
        raise SystemExit("Chromium is needed: apt-get install chromium")
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), automation_worker=False, stage_interval=0)
        store = open_store(settings)
        # As `percorso demo` does: the history, then the last four days through the example
        # automations (into an inbox of this process), so their pages have numbers.
        os.environ.setdefault(WEBHOOK_SECRET_ENV, DEMO_WEBHOOK_SECRET)  # the membership example signs with it
        logging.getLogger("percorso.automation").setLevel(
            logging.ERROR
        )  # its CRM webhook has no receiver here
        with LocalInbox(smtp_port=free_port(), webhook_port=None) as inbox:
            smtp = SmtpSettings(
                host="127.0.0.1", port=inbox.smtp_port, sender="Casa Aurora <ciao@casa-aurora.example>"
            )
            replay_demo(
                store,
                DemoSpec(contacts=5000),
                days=4,
                smtp=smtp,
                base_url="http://127.0.0.1:8799",
                responses=True,
            )
        add_user(store, *USER, role="admin", name="Demo")
        # Three opportunities planned from the map's pain points, for the opportunities lane and page.
        journey = get_journey(store, demo_journey(store))
        found = journey_map(store, journey)
        pains = [(st["stage"], p) for st in found["stages"] for p in st["pain_points"]]
        plans = (
            ("Show delivery costs on the product page", "high", "planned"),
            ("Resend the confirmation e-mail after a day", "medium", "in_progress"),
            ("Fix the Android checkout button", "high", "idea"),
        )
        for (stage, pain), (title, priority, status) in zip(pains, plans, strict=False):
            add_opportunity(
                store, journey.key, stage, title, by=USER[0], pain_key=pain["key"], pain_summary=pain["summary"],
                owner=USER[0], priority=priority, status=status,
            )  # fmt: skip
        with store.session() as s:
            contact = s.rows(
                "SELECT i.contact_id FROM identities i WHERE i.kind = 'email' ORDER BY i.contact_id LIMIT 1"
            )[0][0]
        server = uvicorn.Server(uvicorn.Config(create_app(settings, store), port=8799, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        base = "http://127.0.0.1:8799"
        pages = {
            "overview": "/",
            "map": "/map",
            "map-it": "/map?persona=loyal-customer",
            "funnels": "/funnels?funnel=checkout&breakdown=platform",
            "paths": "/paths",
            "attribution": "/attribution",
            "experiments": "/experiments",
            "contact": f"/contacts/{contact}",
            "automation": "/automations/registration-reminder",
            "opportunities": "/opportunities",
        }
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1440, "height": 900}, device_scale_factor=1)
            page.goto(base + "/login")
            page.fill("input[name=email]", USER[0])
            page.fill("input[name=password]", USER[1])
            page.click("button[type=submit]")
            for name, path in pages.items():
                language = "it" if name == "map-it" else "en"
                page.context.add_cookies([{"name": "percorso_lang", "value": language, "url": base}])
                page.goto(base + path)
                page.wait_for_load_state("networkidle")
                page.wait_for_timeout(600)  # chart animations
                page.screenshot(path=str(OUT / f"{name}.png"), full_page=True)
                print(f"wrote {OUT / (name + '.png')}")
            browser.close()
        server.should_exit = True
        thread.join(timeout=10)
        store.close()


if __name__ == "__main__":
    main()
