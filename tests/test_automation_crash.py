"""Exactly-once decisions, at-least-once delivery: kill -9 automation workers while they drain.

Thousands of contacts enter an automation that waits until a date in their profile (a few
seconds away, so the timers fall due together while the test watches), then sends one email to a
real SMTP server (aiosmtpd) and one webhook to a real HTTP receiver, both in this process. Real
``percorso worker`` processes (PostgreSQL) or ``percorso serve`` (embedded DuckDB) do the work and
are killed with SIGKILL again and again, then restarted. Afterwards:

* every due action reached its receiver: one distinct Message-ID and one distinct
  Idempotency-Key per contact;
* a message can arrive twice only when its worker died between the receiver accepting it and
  the commit marking it sent: a worker sends one message at a time and marks them sent in groups
  of ``PERCORSO_AUTOMATION_SENT_GROUP`` (10 by default; 1 in the embedded run), so the duplicates
  are at most the kills times that group;
* the outbox has every row ``sent``, every enrollment finished, each decision was taken once
  (one outbox row per contact and step) and each sent email is one ``Email Sent`` touchpoint.

Claims held by a killed worker go back to the queue after ``PERCORSO_AUTOMATION_CLAIM_TIMEOUT``
(3 s here instead of 5 minutes) on PostgreSQL; the embedded server, which owns its file, releases
the claims of the process it replaces when it starts.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.parser import BytesHeaderParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller

from percorso.automation.actions.email import SmtpSettings, message_id
from percorso.automation.definition import load_automation
from percorso.automation.engine import Engine, EngineSettings
from percorso.automation.store import save_automation
from percorso.channels import ChannelClassifier, load_rules
from percorso.config import Settings
from percorso.events import parse_message
from percorso.store import Store, open_store
from tests.conftest import create_pg_database, drop_pg_database, free_port

pytestmark = pytest.mark.slow

CLAIM_TIMEOUT = 3

AUTOMATION = """
key: crash
name: Crash test
trigger: {event: Signed Up}
steps:
  - id: until
    wait_until: {trait: send_at}
  - id: hello
    email: {category: transactional, subject: "Welcome {{ traits.name }}", text: "Hello {{ traits.name }}."}
  - id: notify
    webhook: {url: "RECEIVER/hook", data: {reason: welcome}}
"""


class Sink:
    """What the SMTP server and the webhook receiver accepted, in arrival order."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.emails: list[str] = []  # Message-ID
        self.hooks: list[str] = []  # Idempotency-Key
        self._headers = BytesHeaderParser()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        headers = self._headers.parsebytes(envelope.content)
        with self.lock:
            self.emails.append(str(headers["Message-ID"]))
        return "250 OK"

    def counts(self) -> tuple[int, int]:
        with self.lock:
            return len(self.emails), len(self.hooks)


@pytest.fixture
def sink() -> Iterator[tuple[Sink, int, str]]:
    found = Sink()
    smtp_port = free_port()
    controller = Controller(found, hostname="127.0.0.1", port=smtp_port)
    controller.start()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            with found.lock:
                found.hooks.append(self.headers["Idempotency-Key"])
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return None

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request: Any, client_address: Any) -> None:
            return None  # a worker killed mid-request resets its connection: expected here

    http = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    yield found, smtp_port, f"http://127.0.0.1:{http.server_port}"
    http.shutdown()
    http.server_close()
    controller.stop()


def prepare(store: Store, receiver: str, contacts: int, send_at: datetime) -> None:
    """The automation, then each contact's profile (with the date to wait for) and trigger."""
    save_automation(store, load_automation(AUTOMATION.replace("RECEIVER", receiver)), "test")
    classifier = ChannelClassifier(load_rules())
    now = datetime.now(UTC)
    for start in range(0, contacts, 500):
        messages = []
        for i in range(start, min(start + 500, contacts)):
            traits = {"email": f"c{i}@example.it", "name": f"C{i}", "send_at": send_at.isoformat()}
            messages += [
                {"type": "identify", "userId": f"c{i}", "messageId": f"id-{i}", "traits": traits},
                {"type": "track", "userId": f"c{i}", "messageId": f"go-{i}", "event": "Signed Up"},
            ]
        store.ingest(
            [parse_message(json.dumps(m).encode(), received_at=now, classifier=classifier) for m in messages]
        )


class Processes:
    """The worker processes under test: start, SIGKILL, count the kills."""

    def __init__(self, env: dict[str, str], command: list[str], ready: Callable[[], bool] | None = None):
        self.env, self.command, self.ready = env, command, ready
        self.running: list[subprocess.Popen[bytes]] = []
        self.kills = 0
        self.logs: list[Path] = []

    def start(self, count: int) -> None:
        for _ in range(count):
            log = Path(self.env["PERCORSO_DATA_DIR"]) / f"worker-{len(self.logs)}.log"
            self.logs.append(log)
            with log.open("wb") as out:
                self.running.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "percorso", *self.command],
                        # a worker that crashes by itself (not our SIGKILL) prints its Python stacks
                        env={**self.env, "PYTHONFAULTHANDLER": "1"},
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )
        if self.ready is not None:
            deadline = time.monotonic() + 30
            while not self.ready():
                assert time.monotonic() < deadline, self.tail()
                time.sleep(0.05)

    def kill_all(self) -> int:
        count = len(self.running)
        for proc in self.running:
            assert proc.poll() is None, f"a worker exited by itself ({proc.returncode}):\n{self.tail()}"
            proc.send_signal(signal.SIGKILL)
        for proc in self.running:
            proc.wait(timeout=10)
        self.running = []
        self.kills += count
        return count

    def stop(self) -> None:
        for proc in self.running:
            proc.send_signal(signal.SIGTERM)
        for proc in self.running:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.running = []

    def tail(self) -> str:
        return "\n".join(log.read_text(errors="replace")[-2000:] for log in self.logs[-2:] if log.exists())


def crash_loop(
    processes: Processes,
    workers: int,
    progress: Callable[[], dict[str, int]],
    contacts: int,
    rounds: int,
    *,
    deadline: float,
) -> list[dict[str, int]]:
    """Kills every worker ``rounds`` times while work remains, restarting them each time; then
    lets them finish. Each kill comes a random moment after the restarted workers made progress
    (contacts enrolled or messages sent), so every kill hits work in progress however fast the
    machine is. Returns the progress seen just before each kill."""
    rng = random.Random(4)
    seen: list[dict[str, int]] = []
    processes.start(workers)
    last = progress()
    while len(seen) < rounds:
        state = progress()
        while (state["enrolled"], state["sent"]) == (last["enrolled"], last["sent"]):
            assert time.monotonic() < deadline, f"no progress: {state}\n{processes.tail()}"
            time.sleep(0.05)
            state = progress()
        time.sleep(rng.uniform(0.2, 1.5))
        state = progress()
        if state["sent"] == 2 * contacts:
            break
        processes.kill_all()
        seen.append(state)
        last = state
        processes.start(workers)
    while progress()["sent"] < 2 * contacts:
        assert time.monotonic() < deadline, f"not drained: {progress()}\n{processes.tail()}"
        time.sleep(0.1)
    return seen


def check(store: Store, sink: Sink, contacts: int, kills: int, in_flight: int) -> dict[str, Any]:
    with store.session() as s:
        outbox = s.rows("SELECT idempotency_key, channel, status FROM outbox")
        enrollments = dict(s.rows("SELECT status, count(*) FROM enrollments GROUP BY status"))
        per_step = s.rows(
            "SELECT max(n) FROM (SELECT count(*) AS n FROM outbox GROUP BY enrollment_id, step) x"
        )[0][0]
        sent_events = s.rows(
            "SELECT count(*), count(DISTINCT message_id) FROM events WHERE event = 'Email Sent'"
        )[0]
    assert enrollments == {"done": contacts}
    assert Counter(status for _, _, status in outbox) == {"sent": 2 * contacts}
    assert per_step == 1  # each step decided once per contact
    assert tuple(sent_events) == (contacts, contacts)  # each sent email recorded once

    emails, hooks = Counter(sink.emails), Counter(sink.hooks)
    expected_emails = {message_id(key) for key, channel, _ in outbox if channel == "email"}
    expected_hooks = {key for key, channel, _ in outbox if channel == "webhook"}
    assert set(emails) == expected_emails and len(emails) == contacts  # none lost, none invented
    assert set(hooks) == expected_hooks and len(hooks) == contacts
    duplicates = (sum(emails.values()) - len(emails)) + (sum(hooks.values()) - len(hooks))
    # Only a kill between "accepted by the receiver" and the commit marking it sent repeats a
    # message: at most the worker's messages in flight, PERCORSO_AUTOMATION_SENT_GROUP.
    assert duplicates <= kills * in_flight, f"{duplicates} duplicates after {kills} kills"
    return {"duplicates": duplicates, "kills": kills}


def test_kill_dash_nine_workers_on_postgres(sink: tuple[Sink, int, str], tmp_path: Path) -> None:
    found, smtp_port, receiver = sink
    contacts = 2000
    url = create_pg_database("percorso_crash")
    store = open_store(Settings(data_dir=tmp_path, database_url=url, pool_size=2))
    try:
        started = time.monotonic()
        # The timers fall due together a few seconds in, after the first kill.
        prepare(store, receiver, contacts, datetime.now(UTC) + timedelta(seconds=4))
        env = {
            **os.environ,
            "PERCORSO_DATA_DIR": str(tmp_path),
            "PERCORSO_DATABASE_URL": url,
            "PERCORSO_POOL_SIZE": "3",
            "PERCORSO_SMTP_HOST": "127.0.0.1",
            "PERCORSO_SMTP_PORT": str(smtp_port),
            "PERCORSO_WEBHOOK_ALLOW_NETWORKS": "127.0.0.1",  # the test's receiver
            "PERCORSO_AUTOMATION_CLAIM_TIMEOUT": str(CLAIM_TIMEOUT),
        }
        workers = Processes(env, ["worker", "--interval", "0.2"])

        def progress() -> dict[str, int]:
            with store.session() as s:
                state = dict(s.rows("SELECT status, count(*) FROM outbox GROUP BY status"))
                enrolled = s.rows("SELECT count(*) FROM enrollments")[0][0]
            return {
                "enrolled": int(enrolled),
                **{k: int(v) for k, v in state.items()},
                "sent": int(state.get("sent", 0)),
            }

        try:
            seen = crash_loop(workers, 2, progress, contacts, rounds=6, deadline=started + 180)
        finally:
            workers.stop()
        # The kills hit the work in progress: enrolling, and sending with claims left behind.
        assert len(seen) >= 4, seen
        assert sum(1 for s in seen if s.get("sending")) >= 2, seen  # claims left behind, reclaimed
        # The default: sent messages are marked sent ten at a time.
        result = check(store, found, contacts, workers.kills, in_flight=10)
        print(f"\n{contacts} contacts, {workers.kills} kills, {result['duplicates']} duplicates, {seen}")
    finally:
        store.close()
        drop_pg_database(url)


def test_kill_dash_nine_embedded_server(sink: tuple[Sink, int, str], tmp_path: Path) -> None:
    found, smtp_port, receiver = sink
    contacts = 500
    settings = Settings(data_dir=tmp_path)
    store = open_store(settings)
    _, secret = store.create_api_key("secret", "crash test")
    prepare(store, receiver, contacts, datetime.now(UTC) + timedelta(seconds=3))
    store.close()  # one process owns a DuckDB file: the server takes it over
    port = free_port()
    env = {
        **os.environ,
        "PERCORSO_DATA_DIR": str(tmp_path),
        "PERCORSO_DATABASE_URL": "",
        "PERCORSO_PORT": str(port),
        "PERCORSO_STAGE_INTERVAL": "0",
        "PERCORSO_SMTP_HOST": "127.0.0.1",
        "PERCORSO_SMTP_PORT": str(smtp_port),
        "PERCORSO_WEBHOOK_ALLOW_NETWORKS": "127.0.0.1",  # the test's receiver
        # No short claim timeout: the restarted server owns the file, so it releases the claims
        # of the killed one at once.
        "PERCORSO_AUTOMATION_SENT_GROUP": "1",  # each message marked sent alone
    }
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}", auth=(secret, ""), timeout=10)

    def up() -> bool:
        try:
            return api.get("/health").status_code == 200
        except httpx.HTTPError:
            return False

    def progress() -> dict[str, int]:
        stats = api.get("/v1/automations/crash/stats").json()
        actions: Counter[str] = Counter()
        for step in stats["steps"]:
            actions.update(step["actions"])
        return {"enrolled": stats["totals"]["enrolled"], **actions, "sent": actions["sent"]}

    server = Processes(env, ["serve"], ready=up)
    started = time.monotonic()
    try:
        seen = crash_loop(server, 1, progress, contacts, rounds=4, deadline=started + 180)
    finally:
        server.stop()
        api.close()
    assert len(seen) >= 3, seen
    assert any(s.get("sending") for s in seen), seen
    store = open_store(settings)
    try:
        result = check(store, found, contacts, server.kills, in_flight=1)
    finally:
        store.close()
    print(f"\n{contacts} contacts, {server.kills} kills, {result['duplicates']} duplicates, {seen}")


class StallingInbox(Sink):
    """An SMTP server that holds the first message (``holding`` is set) until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.stalled = False
        self.holding = threading.Event()
        self.release = threading.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if not self.stalled:
            self.stalled = True
            self.holding.set()
            while not self.release.is_set():
                await asyncio.sleep(0.01)
        return await super().handle_DATA(server, session, envelope)


def _six_sign_ups(store: Store, classifier: Any) -> None:
    """The welcome automation, and six people signing up who each get its e-mail at once."""
    save_automation(store, load_automation(NO_WAIT), "test")
    now = datetime.now(UTC)
    store.ingest(
        [
            parse_message(
                json.dumps(
                    {
                        "type": "track",
                        "userId": f"s{i}",
                        "messageId": f"s{i}",
                        "event": "Signed Up",
                        "context": {"traits": {"email": f"s{i}@example.it"}},
                    }
                ).encode(),
                received_at=now,
                classifier=classifier,
            )
            for i in range(6)
        ]
    )


def test_a_stalled_sender_leaves_the_messages_taken_from_it(store: Store, classifier: Any) -> None:
    inbox = StallingInbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        _six_sign_ups(store, classifier)
        settings = EngineSettings(claim_timeout=0.5, sent_group=1)
        smtp = SmtpSettings(host="127.0.0.1", port=port)
        stalled, other = (Engine(store, smtp=smtp, settings=settings) for _ in range(2))
        assert stalled.decide() == 6
        # The first worker claims all six and stalls on the first, past the claim timeout...
        first = threading.Thread(target=stalled.deliver)
        first.start()
        assert inbox.holding.wait(30), "the first message never reached the server"
        # ...so another takes them over, once the claim has timed out, and sends all six.
        deadline = time.monotonic() + 30
        taken = 0
        while not taken:
            assert time.monotonic() < deadline, "the stalled claims were never taken over"
            taken = other.deliver()
            time.sleep(0.05)
        assert taken == 6
        inbox.release.set()
        first.join(timeout=30)
        # Back from its stall, the first finds its claims gone and sends nothing more: only the
        # message that was in flight during the stall arrives twice, with its Message-ID.
        assert stalled.stats["delivered"] == 1
        assert len(inbox.emails) == 7 and len(set(inbox.emails)) == 6
        with store.session() as s:
            assert s.rows("SELECT status, count(*) FROM outbox GROUP BY status") == [("sent", 6)]
    finally:
        controller.stop()


class TwoHolds(Sink):
    """An SMTP server that holds the first and the second message it receives, each until the
    test lets it go."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived = 0
        self.holding = [threading.Event(), threading.Event()]
        self.release = [threading.Event(), threading.Event()]

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        n, self.arrived = self.arrived, self.arrived + 1
        if n < 2:
            self.holding[n].set()
            while not self.release[n].is_set():
                await asyncio.sleep(0.01)
        return await super().handle_DATA(server, session, envelope)


def test_a_stalled_sender_waking_while_the_other_still_sends_sends_no_more(
    store: Store, classifier: Any
) -> None:
    """The claim that took the messages over is still sending when the stalled worker wakes:
    the stalled worker must see that its claim is no longer its own, not merely that the
    messages were sent."""
    inbox = TwoHolds()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        _six_sign_ups(store, classifier)
        settings = EngineSettings(claim_timeout=0.5, sent_group=1)
        smtp = SmtpSettings(host="127.0.0.1", port=controller.port)
        stalled, other = (Engine(store, smtp=smtp, settings=settings) for _ in range(2))
        assert stalled.decide() == 6
        first = threading.Thread(target=stalled.deliver)
        first.start()
        assert inbox.holding[0].wait(30), "the first message never reached the server"

        def take_over() -> None:
            deadline = time.monotonic() + 30
            while not other.deliver() and time.monotonic() < deadline:
                time.sleep(0.05)

        second = threading.Thread(target=take_over)
        second.start()
        assert inbox.holding[1].wait(30), "the stalled claims were never taken over"
        # The other worker holds all six and is sending its first; the stalled one wakes now.
        inbox.release[0].set()
        first.join(timeout=30)
        assert stalled.stats["delivered"] == 1
        inbox.release[1].set()
        second.join(timeout=30)
        # Each message arrived, and only the two that were in flight can have arrived twice.
        assert len(set(inbox.emails)) == 6 and len(inbox.emails) <= 8
        with store.session() as s:
            assert s.rows("SELECT status, count(*) FROM outbox GROUP BY status") == [("sent", 6)]
    finally:
        for release in inbox.release:
            release.set()
        controller.stop()


NO_WAIT = """
key: welcome
name: Welcome
trigger: {event: Signed Up}
steps:
  - id: hello
    email: {category: transactional, subject: "Welcome", text: "Hello."}
"""


def test_no_event_is_skipped_when_a_batch_ends_inside_a_request(store: Store, classifier: Any) -> None:
    """Events of one request share their received_at; a batch that ends among them must not
    skip the rest, whichever worker reads next (the cursor moves whole received_at groups)."""
    save_automation(store, load_automation(WAITING), "test")
    received = datetime.now(UTC)
    # Message ids rise while timestamps fall, so no single order of the group matches both.
    store.ingest(
        [
            parse_message(
                json.dumps(
                    {
                        "type": "track",
                        "userId": f"g{i:02}",
                        "messageId": f"g{i:02}",
                        "event": "Signed Up",
                        "timestamp": (received - timedelta(seconds=i)).isoformat(),
                    }
                ).encode(),
                received_at=received,
                classifier=classifier,
            )
            for i in range(30)
        ]
        + [
            parse_message(
                json.dumps(
                    {"type": "track", "userId": f"h{i}", "messageId": f"h{i}", "event": "Signed Up"}
                ).encode(),
                received_at=received + timedelta(milliseconds=1),
                classifier=classifier,
            )
            for i in range(3)
        ]
    )
    small = EngineSettings(event_batch=7)
    workers = [Engine(store, settings=small) for _ in range(2)]
    for _ in range(20):  # two workers taking turns, as on PostgreSQL
        if not sum(worker.process_events() for worker in workers):
            break
    with store.session() as s:
        entered = sorted(r[0] for r in s.rows("SELECT trigger_id FROM enrollments"))
    assert entered == sorted([f"g{i:02}" for i in range(30)] + [f"h{i}" for i in range(3)])


WAITING = """
key: waiting
name: Waiting
trigger: {event: Signed Up}
steps:
  - {id: pause, wait: 4h}
"""
