"""``percorso demo``: generate a realistic dataset, load it through the ingestion path, serve it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from percorso.channels import ChannelClassifier, load_rules
from percorso.collect.loader import load_messages
from percorso.events import Limits
from percorso.store import Store

if TYPE_CHECKING:
    from percorso.demo.generator import DemoSpec

MESSAGES_PER_CONTACT = 50  # the generator's average, for the progress bar


def load_demo(store: Store, spec: DemoSpec, progress: Any = None) -> dict[str, Any]:
    """Generates the demo dataset into ``store`` through the same path as the collector."""
    from percorso.demo.generator import generate

    def pairs() -> Iterator[tuple[int, dict[str, Any]]]:
        n = 0
        for person in generate(spec):
            for message in person:
                yield n, message
                n += 1

    started = time.perf_counter()
    report = load_messages(
        store,
        pairs(),
        classifier=ChannelClassifier(load_rules()),
        limits=Limits(),
        batch_size=20_000,
        source_id="demo",
        progress=progress,
    )
    store.analyze()
    return {**report.as_dict(), "seconds": round(time.perf_counter() - started, 1)}


def demo_journey(store: Store) -> str:
    """Stores the five-stage journey (unless one is stored already) and brings stages up to date."""
    from percorso.analytics.stages import get_journey, list_journeys, save_journey, update
    from percorso.journey import load_journey, template_text

    stored = list_journeys(store)
    if stored:
        journey = get_journey(store, stored[0]["key"])
    else:
        journey = load_journey(template_text("five-stages"), "five-stages")
        save_journey(store, journey, "template:five-stages")
    update(store, journey)
    return journey.key


DEMO_USER = "demo@percorso.local"


def demo_user(store: Store) -> str:
    """The demo's admin for the dashboard, with a fresh random password each run (printed once)."""
    import secrets

    from percorso.web.dashboard.users import UserError, add_user, set_password

    password = secrets.token_urlsafe(9)
    try:
        add_user(store, DEMO_USER, password, role="admin", name="Demo")
    except UserError:
        set_password(store, DEMO_USER, password)
    return password


#: Addresses that mean "every interface": the demo is then reached by other names than its own.
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def reachable_names(host: str) -> list[str]:
    """The names a browser may reach a server listening on ``host`` by: ``host`` itself, or for
    a wildcard the loopback names, this machine's name and its addresses (the one it would
    reach the network from first, which is the one printed)."""
    if host not in WILDCARD_HOSTS:
        return [host]
    import socket

    names: list[str] = []
    try:  # no packet is sent: connecting a UDP socket only picks the outgoing interface
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))
            names.append(probe.getsockname()[0])
    except OSError:
        pass
    try:
        found = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
        names += [str(info[4][0]) for info in found]
    except OSError:
        pass
    names += [socket.gethostname(), "localhost", "127.0.0.1"]
    if host == "::":
        names.append("[::1]")
    return list(dict.fromkeys(n for n in names if n))


def start_shop(app: Any, host: str, port: int) -> None:
    """Serves the demo shop in a background thread (it stops with the process)."""
    import threading

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False))
    threading.Thread(target=server.run, name="demo-shop", daemon=True).start()
