"""Screenshots of the dashboard's main pages for the docs: ``make screenshots``.

Loads a demo store (5,000 contacts) into a temporary directory, serves it, signs in with Chromium
(Debian's ``chromium``, or ``PERCORSO_CHROMIUM``) and writes ``docs/screenshots/*.png``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import uvicorn
from playwright.sync_api import sync_playwright

from percorso.automation.definition import load_automation
from percorso.automation.store import save_automation
from percorso.config import Settings
from percorso.demo.command import demo_journey, load_demo
from percorso.demo.generator import DemoSpec
from percorso.store import open_store
from percorso.web.app import create_app
from percorso.web.dashboard.users import add_user

OUT = Path(__file__).parent.parent / "docs" / "screenshots"
USER = ("demo@percorso.local", "screenshots only")
EXAMPLES = Path(__file__).parent.parent / "percorso" / "automation" / "examples"


def main() -> None:
    chromium = os.environ.get("PERCORSO_CHROMIUM") or shutil.which("chromium")
    if not chromium:
        raise SystemExit("Chromium is needed: apt-get install chromium")
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), automation_worker=False, stage_interval=0)
        store = open_store(settings)
        load_demo(store, DemoSpec(contacts=5000))
        demo_journey(store)
        add_user(store, *USER, role="admin", name="Demo")
        for path in sorted(EXAMPLES.glob("*.yaml")):
            automation = load_automation(path.read_text(encoding="utf-8"), path.name)
            save_automation(store, automation, path.read_text(encoding="utf-8"))
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
            "contact": f"/contacts/{contact}",
            "automation": "/automations/registration-reminder",
        }
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1440, "height": 900}, device_scale_factor=1)
            page.goto(base + "/login")
            page.fill("input[name=email]", USER[0])
            page.fill("input[name=password]", USER[1])
            page.click("button[type=submit]")
            for name, path in pages.items():
                if name == "map-it":
                    page.context.add_cookies([{"name": "percorso_lang", "value": "it", "url": base}])
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
