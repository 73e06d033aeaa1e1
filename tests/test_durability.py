"""Ack means durable: kill -9 the server under sustained load; every acknowledged message survives once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

pytestmark = pytest.mark.slow


def run_cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "percorso", *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def start_server(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "percorso", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"server did not start: {proc.stderr.read().decode() if proc.stderr else ''}")


@pytest.mark.parametrize("engine", ["duckdb", "postgres"])
def test_kill_dash_nine_loses_no_acknowledged_message(engine, request, tmp_path: Path):
    env = {**os.environ, "PERCORSO_DATA_DIR": str(tmp_path)}
    if engine == "postgres":
        env["PERCORSO_DATABASE_URL"] = request.getfixturevalue("pg_url")
        run_cli(env, "migrate")
        from percorso.store.postgres import PostgresStore

        reset = PostgresStore(env["PERCORSO_DATABASE_URL"], pool_size=1)
        reset.reset()
        reset.close()
    write_key = run_cli(env, "keys", "create", "--kind", "write", "--name", "load").strip().splitlines()[-1]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(env, port)

    acked: set[str] = set()
    sent: list[list[dict]] = []
    lock = threading.Lock()
    stop = threading.Event()
    in_flight = [0]  # requests sent and not yet answered

    def load(worker: int) -> None:
        n = 0
        with httpx.Client(base_url=url, auth=(write_key, ""), timeout=5) as client:
            while not stop.is_set():
                batch = [
                    {
                        "type": "track",
                        "event": "Load",
                        "anonymousId": f"w{worker}-v{(n + i) % 37}",
                        "messageId": f"w{worker}-{n + i}",
                    }
                    for i in range(50)
                ]
                n += 50
                with lock:
                    sent.append(batch)
                    in_flight[0] += 1
                try:
                    r = client.post("/v1/batch", json={"batch": batch})
                except httpx.HTTPError:
                    return  # the server is gone
                finally:
                    with lock:
                        in_flight[0] -= 1
                if r.status_code == 200:
                    with lock:
                        acked.update(m["messageId"] for m in batch)

    threads = [threading.Thread(target=load, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    # Kill on progress, not on the clock: once 1,000 messages were acknowledged, at a moment
    # when requests are on the wire.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with lock:
            if len(acked) >= 1000 and in_flight[0] > 0:
                killed_with = in_flight[0]
                server.send_signal(signal.SIGKILL)
                break
        time.sleep(0.001)
    else:
        pytest.fail(f"the load did not reach 1,000 acknowledged messages ({len(acked)})")
    server.wait(timeout=10)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    unanswered = [b for b in sent if b[0]["messageId"] not in acked]
    assert killed_with >= 1 and unanswered, "the kill landed after the last acknowledgement"

    server = start_server(env, port)  # restart on the same store (DuckDB replays its WAL)
    try:
        with httpx.Client(base_url=url, auth=(write_key, ""), timeout=30) as client:
            from percorso.config import Settings
            from percorso.store import open_store

            server.send_signal(signal.SIGTERM)  # release the DuckDB file to read it directly
            server.wait(timeout=30)
            settings = Settings(data_dir=tmp_path, database_url=env.get("PERCORSO_DATABASE_URL", ""))
            store = open_store(settings)
            with store.session() as s:
                present = dict(s.rows("SELECT message_id, count(*) FROM events GROUP BY message_id"))
            store.close()
            missing = acked - set(present)
            assert not missing, f"{len(missing)} acknowledged messages were lost, e.g. {sorted(missing)[:3]}"
            assert all(count == 1 for count in present.values())

            # Clients retry what was not acknowledged: still exactly once.
            server = start_server(env, port)
            for batch in sent:
                assert client.post("/v1/batch", json={"batch": batch}).status_code == 200
            health = client.get("/health").json()
            assert health["status"] == "ok"
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    store = open_store(settings)
    total = store.counts()["events"]
    store.close()
    assert total == len({m["messageId"] for batch in sent for m in batch})
