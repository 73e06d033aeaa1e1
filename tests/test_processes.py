"""Promises that only hold across processes, tested with real ones on one PostgreSQL database:

- several `percorso migrate` (or servers starting) at once leave one schema, each migration once;
- two `percorso serve` processes receiving the same messageIds at the same time store each once;
- a key revoked through one process is refused by the other within 10 seconds
  (docs/collector.md), and never before the revocation.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import create_pg_database, drop_pg_database, free_port
from tests.test_durability import start_server

pytestmark = pytest.mark.slow


@pytest.fixture
def pg_env(tmp_path: Path) -> dict[str, str]:
    url = create_pg_database("percorso_procs")
    yield {**os.environ, "PERCORSO_DATA_DIR": str(tmp_path), "PERCORSO_DATABASE_URL": url}
    drop_pg_database(url)


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "percorso", *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_migrations_started_at_once_apply_once(pg_env: dict[str, str]) -> None:
    from percorso.store.migrations import MIGRATIONS
    from percorso.store.postgres import PostgresStore

    barrier = threading.Barrier(4)
    results: list[subprocess.CompletedProcess[str]] = []

    def migrate() -> None:
        barrier.wait()
        results.append(cli(pg_env, "migrate"))

    threads = [threading.Thread(target=migrate) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert [r.returncode for r in results] == [0, 0, 0, 0], [r.stderr[-2000:] for r in results]
    store = PostgresStore(pg_env["PERCORSO_DATABASE_URL"], pool_size=1)
    try:
        with store.session() as s:
            versions = [int(r[0]) for r in s.rows("SELECT version FROM schema_migrations ORDER BY version")]
        assert versions == [m.version for m in MIGRATIONS]
        assert store.counts()["events"] == 0  # and the schema works
    finally:
        store.close()


def test_two_servers_store_each_message_once_and_share_revocations(pg_env: dict[str, str]) -> None:
    assert cli(pg_env, "migrate").returncode == 0
    created = cli(pg_env, "keys", "create", "--kind", "write", "--name", "shop")
    write_key = created.stdout.strip().splitlines()[-1]
    key_id = re.search(r"key (\S+) \(shop\)", created.stdout).group(1)  # type: ignore[union-attr]
    ports = [free_port(), free_port()]
    servers = [start_server(pg_env, port) for port in ports]
    try:
        clients = [
            httpx.Client(base_url=f"http://127.0.0.1:{p}", auth=(write_key, ""), timeout=30) for p in ports
        ]
        batches = [
            [
                {"type": "track", "event": "Dup", "userId": f"u{n % 17}", "messageId": f"dup-{b}-{n}"}
                for n in range(50)
            ]
            for b in range(6)
        ]
        barrier = threading.Barrier(4)
        answers: list[int] = []

        def send(client: httpx.Client) -> None:
            barrier.wait()
            for batch in batches:  # both processes get the same messages at the same moment
                answers.append(client.post("/v1/batch", json={"batch": batch}).status_code)

        threads = [threading.Thread(target=send, args=(c,)) for c in clients for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert answers == [200] * 24
        from percorso.store.postgres import PostgresStore

        store = PostgresStore(pg_env["PERCORSO_DATABASE_URL"], pool_size=1)
        try:
            with store.session() as s:
                counts = s.rows(
                    "SELECT count(*), count(DISTINCT message_id) FROM events WHERE event = 'Dup'"
                )[0]
            assert tuple(counts) == (300, 300)
            with store.session() as s:
                contacts = s.rows(
                    "SELECT count(DISTINCT i.contact_id) FROM events e "
                    "JOIN identities i ON i.identity_id = e.identity_id WHERE e.event = 'Dup'"
                )[0][0]
            assert contacts == 17  # one contact per user, however the two processes raced
        finally:
            store.close()

        # Revoked through one process (the CLI on the shared database), refused by both within 10 s.
        event = {"type": "track", "event": "After", "userId": "u1"}
        assert all(
            c.post("/v1/track", json={**event, "messageId": f"pre-{i}"}).status_code == 200
            for i, c in enumerate(clients)
        )
        assert cli(pg_env, "keys", "revoke", key_id).returncode == 0
        revoked_at = time.monotonic()
        refused_after: dict[int, float] = {}
        n = 0
        while len(refused_after) < 2 and time.monotonic() - revoked_at < 15:
            for i, c in enumerate(clients):
                if i in refused_after:
                    continue
                n += 1
                status = c.post("/v1/track", json={**event, "messageId": f"post-{n}"}).status_code
                assert status in (200, 401), status
                if status == 401:
                    refused_after[i] = time.monotonic() - revoked_at
            time.sleep(0.2)
        assert sorted(refused_after) == [0, 1], refused_after
        assert max(refused_after.values()) <= 10.5, refused_after
        # Once refused, refused for good on both.
        for c in clients:
            assert c.post("/v1/track", json={**event, "messageId": "late"}).status_code == 401
    finally:
        for server in servers:
            server.send_signal(signal.SIGTERM)
        for server in servers:
            server.wait(timeout=30)


WELCOME = """
key: welcome
name: Welcome
trigger: {event: Signed Up}
steps:
  - id: hello
    email: {category: transactional, subject: "Welcome", text: "Hello."}
"""


def test_a_worker_in_another_process_is_woken_by_notify(pg_env: dict[str, str], tmp_path: Path) -> None:
    """The worker polls once a minute here; an event stored by the server process must reach it
    through LISTEN/NOTIFY, in seconds."""
    from aiosmtpd.controller import Controller

    from tests.test_automation_crash import Sink

    sink = Sink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    env = {**pg_env, "PERCORSO_SMTP_HOST": "127.0.0.1", "PERCORSO_SMTP_PORT": str(controller.port)}
    assert cli(env, "migrate").returncode == 0
    (tmp_path / "welcome.yaml").write_text(WELCOME, encoding="utf-8")
    applied = cli(env, "automation", "apply", str(tmp_path / "welcome.yaml"))
    assert applied.returncode == 0, applied.stderr
    write_key = (
        cli(env, "keys", "create", "--kind", "write", "--name", "site").stdout.strip().splitlines()[-1]
    )
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "percorso", "worker", "--interval", "60"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    port = free_port()
    server = start_server({**env, "PERCORSO_AUTOMATION_WORKER": "0"}, port)
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", auth=(write_key, ""), timeout=30)

        def sign_up(n: int) -> None:
            event = {"type": "track", "event": "Signed Up", "userId": f"n{n}", "messageId": f"notify-{n}"}
            assert (
                client.post(
                    "/v1/track", json={**event, "context": {"traits": {"email": f"n{n}@example.it"}}}
                ).status_code
                == 200
            )

        def emails_within(count: int, seconds: float) -> float:
            started = time.monotonic()
            while sink.counts()[0] < count:
                assert time.monotonic() - started < seconds, (tmp_path / "worker.log").read_text()[-2000:]
                time.sleep(0.05)
            return time.monotonic() - started

        sign_up(1)
        emails_within(1, 90)  # the worker's first pass, or its wake-up: either way it is idle after
        sign_up(2)
        took = emails_within(2, 10)  # far inside the 60 s poll: only NOTIFY can have woken it
        assert took < 10
    finally:
        server.send_signal(signal.SIGTERM)
        worker.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        worker.wait(timeout=30)
        controller.stop()
