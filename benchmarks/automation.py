"""Automation engine benchmarks: ``python -m benchmarks --only automation [--quick]``
(or ``python -m benchmarks.automation [--quick] [--only latency enrollments timers]``).

On the embedded store (DuckDB, one ``percorso serve`` or one engine in process) and on PostgreSQL
with two workers:

* ``latency`` — event → action at a sustained 2,000 events/s through the HTTP collector. A load
  generator posts batches of 20 events every 10 ms on 16 connections (page views from a pool of
  visitors); one event in 50 is a ``Registration Submitted`` from a new person, which an
  automation answers with an email at once. ``email_at_smtp_ms``: from the moment the client
  starts the HTTP request carrying the trigger to the moment the SMTP sink (aiosmtpd, in its own
  process) has the whole message. ``email_after_ack_ms``: the same from the moment the client has
  the collector's 2xx (the event is committed): the engine's share. ``decided_ms``: from the
  request to the ``created_at`` of the outbox row (the engine's clock when the transaction that
  decided began; it commits a few ms later).
* ``enrollments`` — N trigger events stored beforehand (through the store's ingest path), then
  the engine enrolls all of them: audience check (a behaviour rule), enrollment, first step (a
  4-hour wait), log — per second, from the first pass to the last.
* ``timers`` — N contacts (1,000,000; ``--quick``: 50,000) waiting on timers that fall due
  together; drained = every one resumed, checked by a condition (no confirmation yet), sent a
  marketing email (consent, unsubscribe link, frequency cap, template rendered: the outbox row
  recorded) and left waiting at the next step. Email delivery itself is not part of it.

Results go to ``benchmarks/results/automation.json``, rewritten after each measured part (so a
crash keeps what was measured), each figure with ``os.getloadavg()`` before and after: the
machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any

import httpx

from benchmarks.__main__ import RESULTS, PgDatabase, Server, cli, free_port, machine

TRIGGER = "Registration Submitted"

LATENCY = """
key: welcome
name: Welcome
trigger: {event: Registration Submitted}
steps:
  - id: hello
    email: {category: transactional, subject: "Welcome", text: "Confirm your registration."}
"""

ENROLL = """
key: enroll
name: Registration reminder
trigger: {event: Registration Submitted}
audience: {behaviour: [{did: {event: Registration Submitted}, at_least: 1}]}
steps:
  - {id: pause, wait: 4h}
  - id: reminder
    email: {category: transactional, subject: "One click left", text: "Confirm your registration."}
"""

TIMERS = """
key: timers
name: Timers falling due together
trigger: {event: Registration Submitted}
caps: {email: {max: 2, per: 1d}}
steps:
  - {id: pause, wait: 4h}
  - id: unconfirmed
    condition: {behaviour: [{did: {event: Registration Confirmed}, at_least: 0, at_most: 0}]}
    then: reminder
    otherwise: exit
  - id: reminder
    email: {subject: "{{ traits.name }}, one click left", text: "Confirm your account. {{ unsubscribe_url }}"}
  - id: confirmed
    wait_for: {event: {event: Registration Confirmed}, timeout: 2d, then: exit, timed_out: exit}
"""


# -- results ---------------------------------------------------------------------------------


class Results:
    """The JSON file, rewritten after every figure."""

    def __init__(self, path: Path, command: str):
        self.path = path
        self.data: dict[str, Any] = {
            "machine": machine(),
            "started": datetime.now(UTC).isoformat(),
            "command": command,
            "results": {},
        }
        path.parent.mkdir(parents=True, exist_ok=True)

    def add(self, name: str, figure: dict[str, Any]) -> None:
        self.data["results"][name] = figure
        self.path.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        print(f"{name:28} {json.dumps(figure, default=str)}", flush=True)


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {
        "p50": at(0.50),
        "p90": at(0.90),
        "p99": at(0.99),
        "max": round(ordered[-1], 1),
        "mean": round(statistics.fmean(ordered), 1),
    }


# -- stores ----------------------------------------------------------------------------------


@contextmanager
def workspace(engine: str) -> Iterator[tuple[dict[str, str], Any]]:
    """A data directory (and a PostgreSQL database) for one run; ``env`` for subprocesses."""
    workdir = Path(tempfile.mkdtemp(prefix="percorso-bench-"))
    env = {**os.environ, "PERCORSO_DATA_DIR": str(workdir), "PERCORSO_STAGE_INTERVAL": "0"}
    env.pop("PERCORSO_DATABASE_URL", None)
    pg = PgDatabase() if engine == "postgres" else None
    if pg:
        env["PERCORSO_DATABASE_URL"] = pg.url
    try:
        yield env, pg
    finally:
        if pg:
            pg.drop()
        shutil.rmtree(workdir, ignore_errors=True)


def open_env_store(env: dict[str, str], pool_size: int = 4) -> Any:
    from percorso.config import Settings
    from percorso.store import open_store

    return open_store(
        Settings(
            data_dir=Path(env["PERCORSO_DATA_DIR"]),
            database_url=env.get("PERCORSO_DATABASE_URL", ""),
            pool_size=pool_size,
        )
    )


def save(store: Any, text: str) -> None:
    from percorso.automation.definition import load_automation
    from percorso.automation.store import save_automation

    save_automation(store, load_automation(text), "benchmark")


def ingest_triggers(store: Any, count: int, batch: int = 5000) -> None:
    """``count`` trigger events from new people (with an email), through the store's ingest path."""
    import msgspec

    from percorso.channels import ChannelClassifier, load_rules
    from percorso.events import parse_message

    classifier = ChannelClassifier(load_rules())
    for start in range(0, count, batch):
        now = datetime.now(UTC)  # stamped as the collector would: when the batch arrived
        store.ingest(
            [
                parse_message(
                    msgspec.json.encode(
                        {
                            "type": "track",
                            "event": TRIGGER,
                            "userId": f"u{i}",
                            "messageId": f"t{i}",
                            "context": {"traits": {"email": f"u{i}@bench.example"}},
                        }
                    ),
                    received_at=now,
                    classifier=classifier,
                )
                for i in range(start, min(start + batch, count))
            ]
        )


# -- engines in other processes ----------------------------------------------------------------


def _drain(url: str, loop: str, go: Any, out: Any) -> None:
    """A worker process: waits for ``go``, then runs ``loop`` (process_events or run_due) until
    it finds nothing twice in a row."""
    from percorso.automation.engine import Engine, EngineSettings
    from percorso.store.postgres import PostgresStore

    store = PostgresStore(url, pool_size=2)
    engine = Engine(store, settings=EngineSettings())
    engine.automations()
    work: Callable[[], int] = getattr(engine, loop)
    go.wait()
    started = time.perf_counter()
    done = idle = 0
    while idle < 2:
        n = work()
        done += n
        idle = 0 if n else idle + 1
        if not n:
            time.sleep(0.05)
    out.put({"pid": os.getpid(), "done": done, "seconds": round(time.perf_counter() - started, 2)})
    store.close()


def drain(engine: str, env: dict[str, str], store: Any, loop: str, workers: int = 2) -> dict[str, Any]:
    """Runs ``loop`` until the work is done: in this process on DuckDB, in ``workers`` processes
    on PostgreSQL. Returns the wall time and what each worker did."""
    from percorso.automation.engine import Engine, EngineSettings

    if engine == "duckdb":
        runner = Engine(store, settings=EngineSettings())
        runner.automations()
        work: Callable[[], int] = getattr(runner, loop)
        started = time.perf_counter()
        done = 0
        while n := work():
            done += n
        return {"seconds": time.perf_counter() - started, "workers": [{"done": done}]}
    ctx = multiprocessing.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_drain, args=(env["PERCORSO_DATABASE_URL"], loop, go, out)) for _ in range(workers)
    ]
    for p in procs:
        p.start()
    time.sleep(3)  # imported and connected
    started = time.perf_counter()
    go.set()
    reports = [out.get(timeout=3600) for _ in procs]
    for p in procs:
        p.join()
    # Each worker stops after two empty passes (~0.1 s): that tail is not work.
    seconds = max(r["seconds"] for r in reports) if reports else time.perf_counter() - started
    return {"seconds": seconds, "workers": reports}


# -- (b) enrollments ---------------------------------------------------------------------------


def enrollments(engine: str, count: int) -> dict[str, Any]:
    with workspace(engine) as (env, _):
        store = open_env_store(env)
        try:
            save(store, ENROLL)
            started = time.perf_counter()
            ingest_triggers(store, count)
            ingest_s = time.perf_counter() - started
            before = load()
            run = drain(engine, env, store, "process_events")
            after = load()
            with store.session() as s:
                enrolled = s.rows(
                    "SELECT count(*) FROM enrollments WHERE step = 'pause' AND status = 'waiting'"
                )[0][0]
            assert enrolled == count, f"{enrolled} of {count} enrolled"
        finally:
            store.close()
    return {
        "engine": engine,
        "workers": 1 if engine == "duckdb" else 2,
        "trigger_events": count,
        "enrolled": int(enrolled),
        "seconds": round(run["seconds"], 2),
        "enrollments_per_s": round(count / run["seconds"]),
        "per_worker": run["workers"],
        "setup_ingest_s": round(ingest_s, 1),
        "target_per_s": 5000,
        "loadavg_before": before,
        "loadavg_after": after,
    }


# -- (c) timers --------------------------------------------------------------------------------


def generate_waiting(store: Any, count: int, due: datetime) -> None:
    """``count`` contacts (email, name, marketing consent), each enrolled and waiting at ``pause``
    with a timer that fell due at ``due`` — written straight into the tables."""
    with store.writing() as s:
        j = s.json_type
        s.execute(
            "INSERT INTO contacts (contact_id, created_at, traits, consent) "
            f'SELECT i, ?, CAST(\'{{"email": "c\' || i || \'@bench.example", "name": "C\' || i || \'"}}\' AS {j}), '
            "'granted' FROM generate_series(1, ?) AS g(i)",
            [due - timedelta(days=1), count],
        )
        s.execute(
            "INSERT INTO identities (identity_id, kind, value, contact_id, created_at) "
            "SELECT i, 'user_id', 'c' || i, i, ? FROM generate_series(1, ?) AS g(i)",
            [due - timedelta(days=1), count],
        )
        s.execute(
            "INSERT INTO enrollments (enrollment_id, automation_key, version, contact_id, status, step, seq, "
            "due_at, entered_at, trigger_id, entered_pos) "
            "SELECT i, 'timers', 1, i, 'waiting', 'pause', 2, ?, ?, 'gen-' || i, ? FROM generate_series(1, ?) AS g(i)",
            [due, due - timedelta(hours=4), due - timedelta(hours=4), count],
        )
    store.analyze()


def timers(engine: str, count: int) -> dict[str, Any]:
    with workspace(engine) as (env, _):
        store = open_env_store(env)
        try:
            save(store, TIMERS)
            started = time.perf_counter()
            generate_waiting(store, count, datetime.now(UTC) - timedelta(seconds=1))
            generate_s = time.perf_counter() - started
            before = load()
            run = drain(engine, env, store, "run_due")
            after = load()
            with store.session() as s:
                waiting = s.rows(
                    "SELECT count(*) FROM enrollments WHERE step = 'confirmed' AND status = 'waiting'"
                )[0][0]
                queued = s.rows("SELECT count(*) FROM outbox WHERE channel = 'email' AND status = 'pending'")[
                    0
                ][0]
            assert waiting == count and queued == count, f"{waiting} waiting, {queued} emails of {count}"
        finally:
            store.close()
    return {
        "engine": engine,
        "workers": 1 if engine == "duckdb" else 2,
        "contacts": count,
        "seconds": round(run["seconds"], 2),
        "per_s": round(count / run["seconds"]),
        "per_worker": run["workers"],
        "advanced_and_email_recorded": int(waiting),
        "setup_generate_s": round(generate_s, 1),
        "target_seconds_for_1m": 60,
        "loadavg_before": before,
        "loadavg_after": after,
    }


# -- (a) latency -------------------------------------------------------------------------------


class _Recorder:
    """aiosmtpd handler: (person, arrival time) of each message onto a queue."""

    def __init__(self, out: Any) -> None:
        self.out = out
        self.parse = BytesHeaderParser().parsebytes

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        at = time.time()
        self.out.put((str(self.parse(envelope.content)["To"]).split("@")[0], at))
        return "250 OK"


def _smtp_sink(port: int, out: Any, ready: Any, stop: Any) -> None:
    from aiosmtpd.controller import Controller

    controller = Controller(_Recorder(out), hostname="127.0.0.1", port=port)
    controller.start()
    ready.set()
    stop.wait()
    controller.stop()


class SmtpSink:
    """An SMTP server in its own process (as a real one would be: it does not share this
    process's interpreter with the load generator) that notes when each message arrived."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.arrived: dict[str, float] = {}
        self.port = free_port()
        self._out, ready, self._stop = ctx.Queue(), ctx.Event(), ctx.Event()
        self._proc = ctx.Process(
            target=_smtp_sink, args=(self.port, self._out, ready, self._stop), daemon=True
        )
        self._proc.start()
        if not ready.wait(30):
            raise RuntimeError("the SMTP sink did not start")
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            item = self._out.get()
            if item is None:
                return
            self.arrived.setdefault(item[0], item[1])

    def stop(self) -> None:
        self._stop.set()
        self._proc.join(timeout=30)
        self._out.put(None)
        self._reader.join(timeout=30)


def post_load(
    url: str,
    key: str,
    *,
    rate: int,
    batch: int,
    every: int,
    seconds: float,
    sent: dict[str, float],
    label: str,
    acked: dict[str, float] | None = None,
    connections: int = 16,
) -> dict[str, Any]:
    """Posts ``rate`` events/s in batches of ``batch`` for ``seconds``, on ``connections``
    connections taking turns (so a slow answer does not hold the next batch back); event n is a
    trigger from a new person when n % every == 0 (its send time goes into ``sent``, the time
    its 2xx arrived into ``acked``)."""
    period = batch / rate
    total = int(seconds / period)
    statuses: dict[int, int] = {}
    lags: list[float] = []
    answers: list[float] = []
    lock = threading.Lock()
    started = time.perf_counter() + 0.1

    def message(n: int) -> dict[str, Any]:
        if n % every == 0:
            person = f"{label}{n}"
            return {
                "type": "track",
                "event": TRIGGER,
                "userId": person,
                "messageId": f"{label}-{n}",
                "context": {"traits": {"email": f"{person}@bench.example"}},
            }
        return {
            "type": "page",
            "anonymousId": f"v{n % 5000}",
            "messageId": f"{label}-{n}",
            "properties": {"path": f"/p/{n % 97}", "url": f"https://shop.example/p/{n % 97}"},
        }

    def connection(k: int) -> None:
        with httpx.Client(base_url=url, auth=(key, ""), timeout=30) as client:
            for b in range(k, total, connections):
                messages = [message(n) for n in range(b * batch, (b + 1) * batch)]
                due = started + b * period
                now = time.perf_counter()
                if due > now:
                    time.sleep(due - now)
                at = time.time()
                response = client.post("/v1/batch", json={"batch": messages})
                done = time.time()
                with lock:
                    lags.append(max(0.0, now - due))
                    answers.append(done - at)
                    statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                    for m in messages:
                        if m.get("event") == TRIGGER:
                            sent[m["userId"]] = at
                            if acked is not None and response.status_code == 200:
                                acked[m["userId"]] = done

    threads = [threading.Thread(target=connection, args=(k,)) for k in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return {
        "events": total * batch,
        "seconds": round(elapsed, 2),
        "statuses": statuses,
        "connections": connections,
        "schedule_lag_ms": percentiles([x * 1000 for x in lags]),
        "ack_ms": percentiles([x * 1000 for x in answers]),
    }


def latency(engine: str, seconds: int, warmup: int, rate: int = 2000, every: int = 50) -> dict[str, Any]:
    sink = SmtpSink()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with workspace(engine) as (env, _):
            env.update(
                {
                    "PERCORSO_SMTP_HOST": "127.0.0.1",
                    "PERCORSO_SMTP_PORT": str(sink.port),
                    "PERCORSO_AUTOMATION_WORKER": "1" if engine == "duckdb" else "0",
                }
            )
            store = open_env_store(env)
            save(store, LATENCY)
            store.close()
            key = cli(env, "keys", "create", "--kind", "write", "--name", "bench").strip().splitlines()[-1]
            server = Server(env, free_port())
            try:
                if engine == "postgres":
                    for _ in range(2):
                        procs.append(
                            subprocess.Popen(
                                [sys.executable, "-m", "percorso", "worker"],
                                env=env,
                                stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL,
                            )
                        )
                    time.sleep(3)
                warm: dict[str, float] = {}
                post_load(
                    server.url, key, rate=rate, batch=20, every=every, seconds=warmup, sent=warm, label="w"
                )
                sent: dict[str, float] = {}
                acked: dict[str, float] = {}
                before = load()
                load_report = post_load(
                    server.url,
                    key,
                    rate=rate,
                    batch=20,
                    every=every,
                    seconds=seconds,
                    sent=sent,
                    acked=acked,
                    label="m",
                )
                after = load()
                deadline = time.monotonic() + 60
                while any(p not in sink.arrived for p in sent) and time.monotonic() < deadline:
                    time.sleep(0.2)
            finally:
                for p in procs:
                    p.send_signal(signal.SIGTERM)
                for p in procs:
                    p.wait(timeout=60)
                server.stop()
            store = open_env_store(env)
            try:
                with store.session() as s:
                    decided_rows = s.rows(
                        "SELECT n.trigger_id, o.created_at FROM outbox o JOIN enrollments n "
                        "ON n.enrollment_id = o.enrollment_id"
                    )
            finally:
                store.close()
    finally:
        sink.stop()
    person_of = {f"m-{p[1:]}": p for p in sent}  # trigger message id → person
    decided = [
        (created.timestamp() - sent[person_of[trigger]]) * 1000
        for trigger, created in decided_rows
        if trigger in person_of
    ]
    emailed = [(sink.arrived[p] - t) * 1000 for p, t in sent.items() if p in sink.arrived]
    after_ack = [(sink.arrived[p] - t) * 1000 for p, t in acked.items() if p in sink.arrived]
    return {
        "engine": engine,
        "processes": "1 percorso serve (engine inside)"
        if engine == "duckdb"
        else "1 serve + 2 percorso worker",
        "events_per_s_offered": rate,
        "events_per_s_achieved": round(load_report["events"] / load_report["seconds"]),
        "trigger_share": f"1 in {every}",
        "triggers": len(sent),
        "emails_received": len(emailed),
        "email_at_smtp_ms": percentiles(emailed),
        "decided_ms": percentiles(decided),
        "email_after_ack_ms": percentiles(after_ack),
        "load": load_report,
        "target_p99_ms": 100,
        "loadavg_before": before,
        "loadavg_after": after,
    }


# -- main ------------------------------------------------------------------------------------

PARTS = ("latency", "enrollments", "timers")


def run(
    parts: list[str],
    engines: list[str],
    *,
    quick: bool,
    out: Path,
    command: str,
    timer_contacts: int | None = None,
) -> None:
    results = Results(out, command)
    for engine in engines:
        if "latency" in parts:
            seconds, warmup = (8, 3) if quick else (30, 5)
            results.add(f"latency_{engine}", latency(engine, seconds, warmup))
        if "enrollments" in parts:
            results.add(f"enrollments_{engine}", enrollments(engine, 20_000 if quick else 100_000))
        if "timers" in parts:
            size = timer_contacts or (50_000 if quick else 1_000_000)
            results.add(f"timers_{engine}", timers(engine, size))
    print(f"results written to {out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.automation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, short runs (a smoke check)")
    parser.add_argument("--only", nargs="*", choices=PARTS, default=list(PARTS))
    parser.add_argument(
        "--engines", nargs="*", default=["duckdb", "postgres"], choices=["duckdb", "postgres"]
    )
    parser.add_argument("--timer-contacts", type=int, default=None, help="size of the timers part")
    parser.add_argument("--out", type=Path, default=RESULTS / "automation.json")
    args = parser.parse_args(argv)
    command = " ".join(["python -m benchmarks.automation", *(argv if argv is not None else sys.argv[1:])])
    run(
        args.only,
        args.engines,
        quick=args.quick,
        out=args.out,
        command=command,
        timer_contacts=args.timer_contacts,
    )


if __name__ == "__main__":
    main()
