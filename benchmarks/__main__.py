"""Run the benchmarks and write JSON results: ``python -m benchmarks [--quick] [--only NAME ...]``.

* ``ingest_batch``  — HTTP /v1/batch with durable ack (wrk over loopback, a separate process), DuckDB and PostgreSQL
* ``ingest_single`` — HTTP /v1/track, one event per request: throughput and p99 latency
* ``ingest_browser`` — what a browser on another site sends: one event per request to /v1/t,
  ``text/plain`` with the key in the body and an ``Origin`` the key allows (CORS headers answered)
* ``identity_merges`` — identify calls that merge two existing contacts each, through the store's ingest path
* ``automation`` (or one part: ``automation_latency``, ``automation_enrollments``,
  ``automation_timers``) — the automation engine, see ``benchmarks/automation.py``; not in the
  default set (the 1,000,000-timer part alone takes minutes); results in ``results/automation.json``

Every HTTP figure counts only 2xx responses, and the store is checked afterwards to hold exactly the
acknowledged events.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg

HERE = Path(__file__).parent
RESULTS = HERE / "results"
AUTOMATION_PARTS = ("latency", "enrollments", "timers")
PG_ADMIN = os.environ.get("PERCORSO_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(mem, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def ensure_wrk() -> str:
    wrk = shutil.which("wrk")
    if wrk:
        return wrk
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False, capture_output=True)
        wrk = shutil.which("wrk")
    if not wrk:
        sys.exit("wrk is needed for the HTTP benchmarks: apt-get install wrk")
    return wrk


class PgDatabase:
    def __init__(self) -> None:
        self.name = f"percorso_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        self.url = PG_ADMIN.rsplit("/", 1)[0] + "/" + self.name

    def drop(self) -> None:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "percorso", *args], env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr)
    return done.stdout


class Server:
    """``percorso serve`` in its own process on a loopback port."""

    def __init__(self, env: dict[str, str], port: int, workers: int = 1):
        self.env, self.port = env, port
        self.url = f"http://127.0.0.1:{port}"
        args = ["serve", "--port", str(port), "--workers", str(workers)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "percorso", *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("server did not start")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def stored_message_ids(env: dict[str, str]) -> tuple[int, list[str]]:
    """How many events the store holds, and every messageId among them (one row each)."""
    from percorso.config import Settings
    from percorso.store import open_store

    settings = Settings(
        data_dir=Path(env["PERCORSO_DATA_DIR"]), database_url=env.get("PERCORSO_DATABASE_URL", "")
    )
    store = open_store(settings)
    try:
        with store.session() as s:
            ids = [str(r[0]) for r in s.rows("SELECT message_id FROM events")]
        return store.counts()["events"], ids
    finally:
        store.close()


def check_acknowledged(
    ids: list[str], phase: str, run: dict[str, Any], batch: int, connections: int
) -> dict[str, Any]:
    """Whether every request wrk saw acknowledged is in the store, each message exactly once.

    wrk (one thread) generates requests in order and each connection waits for its answer before
    it sends the next, so the requests still unanswered when wrk stops are among the last
    ``connections`` generated: every earlier request (but the first, which wrk never sends) must
    be stored wholly, and of those last ones at least as many as were answered. With no errors,
    answered means acknowledged."""
    assert run["threads"] == 1
    generated = run["generated_messages"] // batch
    answered = run["requests"]
    prefix = f"{phase}-1-"
    per_request: dict[int, int] = {}
    phantom = 0
    for message_id in ids:
        if not message_id.startswith(prefix):
            continue
        n = int(message_id[len(prefix) :])
        counter, rest = divmod(n - 1, 7)
        if rest or not 1 <= counter <= run["generated_messages"]:
            phantom += 1
            continue
        index = (counter - 1) // batch + 1
        per_request[index] = per_request.get(index, 0) + 1
    mine = sum(1 for i in ids if i.startswith(prefix))
    partial = sum(1 for n in per_request.values() if n != batch)
    # Request 1 is the one wrk builds at start to see whether the script varies its requests,
    # and never sends; then each connection has at most one request unanswered at the end.
    tail = max(generated - connections, 1)
    missing_before_tail = sum(1 for i in range(2, tail + 1) if i not in per_request)
    stored_in_tail = sum(1 for i in range(tail + 1, generated + 1) if i in per_request)
    answered_in_tail = answered - (tail - 1)
    clean = run["non_2xx"] == 0 and run["socket_errors"] == 0
    return {
        "requests_sent": generated - 1,
        "requests_acknowledged": answered - run["non_2xx"],
        "requests_stored": len(per_request),
        "probe_request_stored": 1 in per_request,  # must be False: wrk never sends it
        "requests_stored_partly": partial,
        "acknowledged_missing": missing_before_tail + max(answered_in_tail - stored_in_tail, 0),
        "unknown_ids": phantom,
        "ids_stored_twice": mine - len(set(i for i in ids if i.startswith(prefix))),
        "ok": clean
        and 1 not in per_request
        and phantom == 0
        and partial == 0
        and missing_before_tail == 0
        and stored_in_tail >= answered_in_tail
        and mine == len(set(i for i in ids if i.startswith(prefix))),
    }


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def baseline_tree(ref: str) -> Path:
    """A checkout of ``ref`` (e.g. the commit before a change) whose code a server can run."""
    tree = Path(tempfile.gettempdir()) / f"percorso-baseline-{ref}"
    if not (tree / "percorso").is_dir():
        repo = HERE.parent
        subprocess.run(["git", "-C", str(repo), "worktree", "prune"], check=True)
        subprocess.run(
            ["git", "-C", str(repo), "worktree", "add", "--detach", str(tree), ref],
            check=True,
            capture_output=True,
        )
    return tree


def http_load(
    engine: str,
    *,
    batch: int,
    connections: int,
    seconds: int,
    warmup: int,
    workers: int = 1,
    code: Path | None = None,
    browser: bool = False,
) -> dict[str, Any]:
    """One server, one wrk process: warm up, then measure; verify the store holds exactly what was acked.

    ``code`` runs the server from another checkout (``--baseline``), on the same machine and data."""
    wrk = ensure_wrk()
    workdir = Path(tempfile.mkdtemp(prefix="percorso-bench-"))
    env = {**os.environ, "PERCORSO_DATA_DIR": str(workdir)}
    if code is not None:
        env["PYTHONPATH"] = str(code)
    pg = PgDatabase() if engine == "postgres" else None
    if pg:
        env["PERCORSO_DATABASE_URL"] = pg.url
    try:
        cli(env, "migrate")
        origin = "https://shop.example"
        allow = ["--origin", origin] if browser else []
        key = (
            cli(env, "keys", "create", "--kind", "write", "--name", "bench", *allow).strip().splitlines()[-1]
        )
        server = Server(env, free_port(), workers)
        runs = []
        try:
            for phase, duration in (("warmup", warmup), ("measure", seconds)):
                wrk_env = {
                    **os.environ,
                    "BATCH": str(batch),
                    "AUTH": base64.b64encode(f"{key}:".encode()).decode(),
                    "RUN": phase,
                    "BROWSER": "1" if browser else "0",
                    "WRITE_KEY": key,
                    "ORIGIN": origin,
                }
                done = subprocess.run(
                    [
                        wrk,
                        "-t1",
                        f"-c{connections}",
                        f"-d{duration}s",
                        "--timeout",
                        "10s",
                        "-s",
                        str(HERE / "load.lua"),
                        server.url,
                    ],
                    env=wrk_env,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                line = next(ln for ln in done.stdout.splitlines() if ln.startswith("WRKJSON "))
                runs.append((phase, json.loads(line[len("WRKJSON ") :])))
        finally:
            server.stop()
        total_ok = sum(r["requests"] - r["non_2xx"] for _, r in runs)
        stored, ids = stored_message_ids(env)
        checks = {phase: check_acknowledged(ids, phase, r, batch, connections) for phase, r in runs}
        result = dict(runs)["measure"]
        ok = result["requests"] - result["non_2xx"]
        seconds_measured = result["duration_us"] / 1e6
        return {
            "engine": engine,
            "server_processes": workers,
            "batch_size": batch,
            "connections": connections,
            "seconds": round(seconds_measured, 2),
            "requests_per_s": round(ok / seconds_measured),
            "events_per_s": round(ok * batch / seconds_measured),
            "latency_ms": {k[:-3]: result[k] for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")},
            "non_2xx": result["non_2xx"],
            "socket_errors": result["socket_errors"],
            "acked_events_total": total_ok * batch,
            "stored_events_total": stored,
            # Every acknowledged request's messageIds found in the store, each once (see
            # check_acknowledged); requests in flight when wrk stops may be stored unacknowledged.
            "every_ack_stored": all(c["ok"] for c in checks.values()) and stored >= total_ok * batch,
            "acknowledged_check": checks,
        }
    finally:
        if pg:
            pg.drop()
        shutil.rmtree(workdir, ignore_errors=True)


def identity_merges(engine: str, count: int, batch: int = 5_000) -> dict[str, Any]:
    """``count`` identify calls, each joining an existing anonymous contact to an existing known one."""
    import msgspec

    from percorso.channels import ChannelClassifier, load_rules
    from percorso.config import Settings
    from percorso.events import parse_message
    from percorso.store import open_store

    workdir = Path(tempfile.mkdtemp(prefix="percorso-bench-"))
    pg = PgDatabase() if engine == "postgres" else None
    store = open_store(Settings(data_dir=workdir, database_url=pg.url if pg else ""))
    clf = ChannelClassifier(load_rules())
    now = datetime.now(UTC)

    def events(messages: list[dict[str, Any]]) -> list[Any]:
        return [parse_message(msgspec.json.encode(m), received_at=now, classifier=clf) for m in messages]

    try:
        for start in range(0, count, batch):  # the two sides of every future merge exist beforehand
            rng = range(start, min(start + batch, count))
            store.ingest(
                events(
                    [{"type": "page", "anonymousId": f"anon-{i}", "messageId": f"p{i}"} for i in rng]
                    + [
                        {
                            "type": "identify",
                            "userId": f"user-{i}",
                            "messageId": f"u{i}",
                            "traits": {"email": f"person{i}@example.it"},
                        }
                        for i in rng
                    ]
                )
            )
        before = store.counts()["contacts"]
        merges = [
            events(
                [
                    {
                        "type": "identify",
                        "userId": f"user-{i}",
                        "anonymousId": f"anon-{i}",
                        "messageId": f"m{i}",
                    }
                    for i in range(start, min(start + batch, count))
                ]
            )
            for start in range(0, count, batch)
        ]
        started = time.perf_counter()
        for chunk in merges:
            store.ingest(chunk)
        elapsed = time.perf_counter() - started
        after = store.counts()["contacts"]
        assert before - after == count, f"expected {count} merges, contacts went {before} → {after}"
        return {
            "engine": engine,
            "merges": count,
            "batch_size": batch,
            "seconds": round(elapsed, 2),
            "merges_per_s": round(count / elapsed),
            "contacts_before": before,
            "contacts_after": after,
        }
    finally:
        store.close()
        if pg:
            pg.drop()
        shutil.rmtree(workdir, ignore_errors=True)


def procs(engine: str) -> int:
    # DuckDB allows one process per file; on PostgreSQL one server process per core.
    return 1 if engine == "duckdb" else (os.cpu_count() or 1)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="short runs (a smoke check, not the published figures)"
    )
    parser.add_argument(
        "--only",
        nargs="*",
        choices=[
            "ingest_batch",
            "ingest_single",
            "ingest_browser",
            "identity_merges",
            "automation",
            *(f"automation_{part}" for part in AUTOMATION_PARTS),
        ],
    )
    parser.add_argument(
        "--engines", nargs="*", default=["duckdb", "postgres"], choices=["duckdb", "postgres"]
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "collector.json")
    parser.add_argument(
        "--baseline",
        metavar="REF",
        help="also run the HTTP ingest figures on the code of git REF, alternating with this tree",
    )
    args = parser.parse_args()
    seconds, warmup = (5, 2) if args.quick else (20, 5)
    only = set(args.only or ["ingest_batch", "ingest_single", "ingest_browser", "identity_merges"])
    automation = [p for p in AUTOMATION_PARTS if "automation" in only or f"automation_{p}" in only]
    if automation:
        from benchmarks import automation as automation_bench

        automation_bench.run(
            automation,
            args.engines,
            quick=args.quick,
            out=RESULTS / "automation.json",
            command=" ".join(["python -m benchmarks", *sys.argv[1:]]),
        )
    if not only & {"ingest_batch", "ingest_single", "ingest_browser", "identity_merges"}:
        return
    results: dict[str, Any] = {
        "machine": machine(),
        "started": datetime.now(UTC).isoformat(),
        "command": " ".join(["python -m benchmarks", *sys.argv[1:]]),
        "results": {},
    }
    if "ingest_browser" in only:  # what a page downloads to send them
        tracker = (HERE.parent / "percorso" / "track" / "percorso.js").read_bytes()
        results["tracker"] = {"bytes": len(tracker), "gzip_bytes": len(gzip.compress(tracker, 9))}
        print(f"percorso.js {len(tracker):,} bytes, {results['tracker']['gzip_bytes']:,} gzipped", flush=True)
    trees: list[tuple[str, Path | None]] = [("", None)]
    if args.baseline:
        trees.insert(0, (f"baseline_{args.baseline}_", baseline_tree(args.baseline)))
        results["baseline"] = args.baseline
    for engine in args.engines:
        for label, code in trees:
            if "ingest_batch" in only:
                r = http_load(
                    engine,
                    batch=500,
                    connections=8,
                    seconds=seconds,
                    warmup=warmup,
                    workers=procs(engine),
                    code=code,
                )
                results["results"][f"{label}ingest_batch_{engine}"] = r
                print(
                    f"{label}{engine:8} batch ingest   {r['events_per_s']:>9,} events/s  "
                    f"p99 {r['latency_ms']['p99']} ms  every ack stored: {r['every_ack_stored']}",
                    flush=True,
                )
            if "ingest_single" in only:
                r = http_load(
                    engine,
                    batch=1,
                    connections=64,
                    seconds=seconds,
                    warmup=warmup,
                    workers=procs(engine),
                    code=code,
                )
                results["results"][f"{label}ingest_single_{engine}"] = r
                print(
                    f"{label}{engine:8} single events  {r['requests_per_s']:>9,} req/s     "
                    f"p99 {r['latency_ms']['p99']} ms  every ack stored: {r['every_ack_stored']}",
                    flush=True,
                )
            if "ingest_browser" in only:
                r = http_load(
                    engine,
                    batch=1,
                    connections=64,
                    seconds=seconds,
                    warmup=warmup,
                    workers=procs(engine),
                    code=code,
                    browser=True,
                )
                results["results"][f"{label}ingest_browser_{engine}"] = r
                print(
                    f"{label}{engine:8} browser events {r['requests_per_s']:>9,} req/s     "
                    f"p99 {r['latency_ms']['p99']} ms  every ack stored: {r['every_ack_stored']}",
                    flush=True,
                )
        if "identity_merges" in only:
            r = identity_merges(engine, 20_000 if args.quick else 100_000)
            results["results"][f"identity_merges_{engine}"] = r
            print(f"{engine:8} identity merges {r['merges_per_s']:>8,} merges/s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
