"""Journey analytics at scale: ``python -m benchmarks.analytics [--contacts N] [--quick]``.

Generates a journey-shaped dataset straight into the store's tables (most visitors browse, fewer
add to cart, fewer buy, some come back; a fifth of them identify, so events hang off two
identifiers per contact and are resolved at query time), then times, on the embedded DuckDB
store and on PostgreSQL:

* a 5-step funnel with a 14-day window,
* paths from session start (5 steps, top 50 links),
* the stage overview and the full stage rebuild (five-stage template),
* the journey map (with pain points),

and runs the same 5-step funnel in ClickHouse's ``windowFunnel`` (the ``chdb`` package, data in a
MergeTree table) on the same events, checking that the counts are identical and reporting the
ratio. Each engine's queries run in a fresh process, whose peak resident memory is reported
(``peak_rss_mib``; the data generation's own peak is ``generate_peak_rss_mib``). Results go to
``benchmarks/results/analytics.json``, rewritten after every dataset size
(and every engine within it), so a long run that is stopped keeps what it measured. The 1-, 5-
and 15-minute load averages are recorded around each engine's timings: the machine may be shared.

Counting note: percorso counts a contact's first step-1 event; ``windowFunnel`` takes the best
of every start. The generated data has one attempt per contact with strictly increasing times,
where both definitions give the same counts — so the comparison is about speed on equal work.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb

from benchmarks.__main__ import RESULTS, PgDatabase, machine

STEPS = ["Product Viewed", "Product Added", "Checkout Started", "Payment Info Entered", "Order Completed"]
END = datetime(2026, 11, 1, tzinfo=UTC)
DAYS = 180
WINDOW = 14 * 86_400


def generate(con: duckdb.DuckDBPyConnection, contacts: int) -> int:
    """Fills events, identities and contacts of a migrated percorso DuckDB store; ~10 events/contact."""
    start = int(END.timestamp()) - DAYS * 86_400
    con.execute(f"""
        CREATE TEMP TABLE people AS
        SELECT c AS cid,
               CAST({start} + (hash(c * 7) % {(DAYS - 20) * 86_400}) AS BIGINT) AS t0,
               (hash(c * 11) % 1000) / 1000.0 AS r,
               CAST(hash(c * 13) % 10 + 4 AS BIGINT) AS pages,
               (hash(c * 17) % 100) < 20 AS identifies,
               CASE hash(c * 19) % 3 WHEN 0 THEN 'ads' WHEN 1 THEN 'search' ELSE 'direct' END AS first_channel
        FROM range(1, {contacts} + 1) t(c)
    """)
    con.execute("""
        INSERT INTO contacts (contact_id, created_at, traits)
        SELECT cid, to_timestamp(t0), '{}' FROM people
    """)
    con.execute(f"""
        INSERT INTO identities (identity_id, kind, value, contact_id, created_at)
        SELECT cid, 'anonymous_id', 'a' || cid, cid, to_timestamp(t0) FROM people
        UNION ALL
        SELECT {contacts} + cid, 'user_id', 'u' || cid, cid, to_timestamp(t0) FROM people WHERE identifies
    """)
    # Funnel steps: each step reached with a falling probability; times strictly increase.
    # Identified contacts do the later steps under their user id (another identity).
    steps = []
    thresholds = [0.75, 0.35, 0.22, 0.17, 0.14]  # share of contacts reaching each step
    gaps = [0, 3_600, 86_400, 600, 120]  # typical seconds from the previous step
    for k, (name, share) in enumerate(zip(STEPS, thresholds, strict=True)):
        offset = " + ".join(f"(1 + hash(cid * {31 + j}) % {max(gaps[j], 1)})" for j in range(1, k + 1)) or "0"
        # a slice of contacts take longer than the window between step 1 and 2
        late = f" + CASE WHEN hash(cid * 97) % 10 = 0 THEN {20 * 86_400} ELSE 0 END" if k >= 1 else ""
        ident = f"CASE WHEN identifies AND {k} >= 2 THEN {contacts} + cid ELSE cid END"
        steps.append(
            f"SELECT cid, {ident} AS identity_id, '{name}' AS event, 'track' AS type, "
            f"t0 + 3600 + {offset}{late} AS ts, 'web' AS channel FROM people WHERE r < {share}"
        )
    pages = (
        "SELECT cid, cid AS identity_id, NULL AS event, 'page' AS type, t0 + p * 60 AS ts, "
        "CASE WHEN p = 0 THEN first_channel ELSE 'web' END AS channel FROM people, range(0, pages) t(p)"
    )
    con.execute(f"""
        INSERT INTO events (message_id, type, event, name, timestamp, received_at, channel, page_path,
                            library, properties, traits, context, integrations, identity_id)
        SELECT 'm' || row_number() OVER (), type, event, CASE WHEN type = 'page' THEN 'Home' END,
               to_timestamp(ts), to_timestamp(ts), channel, CASE WHEN type = 'page' THEN '/' END,
               'analytics.js', '{{}}', '{{}}', '{{}}', '{{}}', identity_id
        FROM ({" UNION ALL ".join([pages, *steps])}) x
    """)
    return int(con.execute("SELECT count(*) FROM events").fetchone()[0])  # type: ignore[index]


def load() -> list[float]:
    """The 1-, 5- and 15-minute load averages (other work on a shared machine slows every figure)."""
    return [round(x, 2) for x in os.getloadavg()]


def timed(fn: Any, repeat: int = 3) -> tuple[float, Any]:
    """Best of ``repeat`` wall-clock runs (the first also warms caches)."""
    best, result, _ = timed_cpu(fn, repeat)
    return best, result


def timed_cpu(fn: Any, repeat: int = 3) -> tuple[float, Any, float]:
    """Best of ``repeat`` wall-clock runs, and the CPU seconds this process (all its threads)
    spent in that run — for DuckDB, which runs in process, a figure other work on a shared
    machine disturbs far less than wall time; for PostgreSQL only the client's share."""
    best, result, cpu = float("inf"), None, 0.0
    for _ in range(repeat):
        started, cpu_started = time.perf_counter(), _cpu()
        result = fn()
        wall = time.perf_counter() - started
        if wall < best:
            best, cpu = wall, _cpu() - cpu_started
    return round(best, 3), result, round(cpu, 3)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_percorso(store: Any, label: str, repeat: int) -> dict[str, Any]:
    from percorso.analytics.funnel import FunnelSpec, funnel, parse_step
    from percorso.analytics.journeymap import journey_map
    from percorso.analytics.paths import PathSpec, paths
    from percorso.analytics.stages import rebuild, save_journey, stage_overview
    from percorso.journey import load_journey, template_text

    spec = FunnelSpec(
        steps=[parse_step(s) for s in STEPS],
        start=END - timedelta(days=DAYS + 1),
        end=END + timedelta(days=1),
        window_seconds=WINDOW,
        as_of=END + timedelta(days=30),
    )
    journey = load_journey(template_text("five-stages"))
    save_journey(store, journey, "bench")
    out: dict[str, Any] = {"engine": label, "load_before": load()}

    def measure(name: str, fn: Any, times: int = repeat) -> Any:
        out[f"{name}_s"], result, out[f"{name}_cpu_s"] = timed_cpu(fn, times)
        return result

    result = measure("funnel", lambda: funnel(store, spec))
    out["funnel_counts"] = [s["contacts"] for s in result["total"]["steps"]]
    path_spec = PathSpec(start=spec.start, end=spec.end, max_steps=5, top_edges=50)
    links = measure("paths", lambda: paths(store, path_spec))["links"]
    out["paths_links"] = len(links)
    out["paths_digest"] = hashlib.sha1(json.dumps(links, sort_keys=True).encode()).hexdigest()[:12]
    out["stage_entries"] = measure("stage_rebuild", lambda: rebuild(store, journey), 1).entries
    measure(
        "stage_overview", lambda: stage_overview(store, journey, since=END - timedelta(days=DAYS), until=END)
    )
    measure(
        "journey_map",
        lambda: journey_map(store, journey, start=END - timedelta(days=DAYS), end=END, refresh=False),
    )
    out["load_after"] = load()
    print(f"{label:24} {json.dumps(out)}", file=sys.stderr, flush=True)
    return out


def in_child(engine: str, target: str, label: str, repeat: int) -> dict[str, Any]:
    """:func:`run_percorso` in a fresh process, so its peak memory is the queries' own (not the
    data generation's); ``target`` is the DuckDB file or the PostgreSQL URL."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.analytics",
            "--child",
            engine,
            target,
            label,
            "--repeat",
            str(repeat),
        ],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def child(engine: str, target: str, label: str, repeat: int) -> None:
    if engine == "duckdb":
        from percorso.store.duckdb import DuckDBStore

        store: Any = DuckDBStore(Path(target))
    else:
        from percorso.store.postgres import PostgresStore

        store = PostgresStore(target, pool_size=2)
    store.migrate()  # a store left by an older version
    out = run_percorso(store, label, repeat)
    store.close()
    out["peak_rss_mib"] = peak_rss_mib()
    print(json.dumps(out), flush=True)


def peak_rss_mib() -> int:
    """This process's peak resident memory. On Linux the high-water mark of its own address space
    (``VmHWM``): ``ru_maxrss`` survives ``exec`` and would report the parent's peak in a child."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def run_clickhouse(parquet: Path, repeat: int) -> dict[str, Any]:
    try:
        from chdb import session  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        # The optional `bench` extra (pip install -e ".[bench]"); installed on first use so the run stays one command.
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "chdb>=3"], check=True)
        from chdb import session  # type: ignore[import-not-found, unused-ignore]
    with tempfile.TemporaryDirectory() as tmp:
        sess = session.Session(tmp)
        sess.query("CREATE DATABASE IF NOT EXISTS b")
        sess.query(
            "CREATE TABLE b.ev (cid UInt64, event String, ts DateTime('UTC')) ENGINE = MergeTree ORDER BY (cid, ts)"
        )
        started = time.perf_counter()
        sess.query(f"INSERT INTO b.ev SELECT cid, event, ts FROM file('{parquet}', Parquet)")
        load_s = round(time.perf_counter() - started, 3)
        conds = ", ".join(f"event = '{s}'" for s in STEPS)
        sql = (
            f"SELECT level, count() AS n FROM (SELECT cid, windowFunnel({WINDOW})(ts, {conds}) AS level "
            f"FROM b.ev WHERE event IN ({', '.join(repr(s) for s in STEPS)}) GROUP BY cid) GROUP BY level ORDER BY level"
        )
        best, text = timed(lambda: str(sess.query(sql, "CSV")), repeat)
        sess.close()
    levels = {int(a): int(b) for a, b in (line.split(",") for line in text.strip().splitlines())}
    counts = [sum(n for level, n in levels.items() if level >= k) for k in range(1, len(STEPS) + 1)]
    return {
        "engine": "clickhouse (chdb) windowFunnel",
        "load_s": load_s,
        "funnel_s": best,
        "funnel_counts": counts,
    }


def to_postgres(duck_path: Path, tmp: Path) -> tuple[PgDatabase, Any]:
    from percorso.store.postgres import PostgresStore

    db = PgDatabase()
    store = PostgresStore(db.url, pool_size=2)
    store.migrate()
    con = duckdb.connect(str(duck_path), read_only=True)
    started = time.perf_counter()
    for table in ("contacts", "identities", "events"):
        csv = tmp / f"{table}.csv"
        con.execute(f"COPY {table} TO '{csv}' (HEADER, DELIMITER ',')")
        columns = [d[0] for d in con.execute(f"SELECT * FROM {table} LIMIT 0").description]
        copy_sql = f"COPY {table} ({', '.join(columns)}) FROM STDIN WITH (FORMAT csv, HEADER true)"
        with (
            store.pool.connection() as conn,
            conn.cursor() as cur,
            cur.copy(copy_sql) as copy,
            csv.open("rb") as fh,
        ):
            while chunk := fh.read(1 << 20):
                copy.write(chunk)
        csv.unlink()
    con.close()
    store.analyze()
    print(f"postgres load {time.perf_counter() - started:.1f} s", flush=True)
    return db, store


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.analytics",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--contacts",
        type=int,
        nargs="*",
        default=[100_000, 1_000_000],
        help="dataset sizes in contacts (~10 events each)",
    )
    parser.add_argument("--quick", action="store_true", help="one small dataset, one repetition")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--no-clickhouse", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "analytics.json")
    parser.add_argument("--child", nargs=3, metavar=("ENGINE", "TARGET", "LABEL"), help=argparse.SUPPRESS)
    parser.add_argument("--repeat", type=int, default=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.repeat)
        return
    sizes = [20_000] if args.quick else args.contacts
    repeat = 1 if args.quick else 3
    from percorso.store.duckdb import DuckDBStore

    results: dict[str, Any] = {
        "machine": machine(),
        "started": datetime.now(UTC).isoformat(),
        "command": " ".join(["python -m benchmarks.analytics", *sys.argv[1:]]),
        "load_at_start": load(),
        "runs": [],
    }

    def save(run: dict[str, Any] | None = None, status: str = "running") -> None:
        """Writes everything measured so far (the run in progress included, marked partial)."""
        runs = results["runs"] + ([{**run, "partial": True}] if run is not None else [])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({**results, "status": status, "runs": runs}, indent=2) + "\n")

    for contacts in sizes:
        with tempfile.TemporaryDirectory() as tmpdir:
            tmp = Path(tmpdir)
            path = tmp / "percorso.duckdb"
            store = DuckDBStore(path)
            store.migrate()
            started = time.perf_counter()
            with store.writing() as s:
                events = generate(s.con, contacts)  # type: ignore[attr-defined]
            run: dict[str, Any] = {
                "contacts": contacts,
                "events": events,
                "generate_s": round(time.perf_counter() - started, 1),
            }
            print(f"{contacts:,} contacts, {events:,} events generated in {run['generate_s']} s", flush=True)
            run["generate_peak_rss_mib"] = peak_rss_mib()
            store.close()
            run["duckdb"] = in_child("duckdb", str(path), f"duckdb {events:,}", repeat)
            save(run)
            store = DuckDBStore(path)
            if not args.no_clickhouse:
                parquet = tmp / "events.parquet"
                with store.session() as s:
                    s.execute(
                        f"COPY (SELECT i.contact_id AS cid, e.event, e.timestamp AS ts FROM events e JOIN identities i "
                        f"ON i.identity_id = e.identity_id WHERE e.event IS NOT NULL) TO '{parquet}' (FORMAT parquet)"
                    )
                run["clickhouse"] = run_clickhouse(parquet, repeat)
                run["clickhouse"]["identical_counts"] = (
                    run["clickhouse"]["funnel_counts"] == run["duckdb"]["funnel_counts"]
                )
                run["duckdb_vs_clickhouse_funnel_ratio"] = round(
                    run["duckdb"]["funnel_s"] / max(run["clickhouse"]["funnel_s"], 1e-6), 2
                )
                print(f"clickhouse {json.dumps(run['clickhouse'])}", flush=True)
                save(run)
            store.close()
            if not args.no_postgres:
                db, pg = to_postgres(path, tmp)
                try:
                    run["postgres"] = in_child("postgres", db.url, f"postgres {events:,}", repeat)
                    run["postgres"]["identical_counts"] = (
                        run["postgres"]["funnel_counts"] == run["duckdb"]["funnel_counts"]
                    )
                    run["postgres"]["identical_paths"] = (
                        run["postgres"]["paths_digest"] == run["duckdb"]["paths_digest"]
                    )
                finally:
                    pg.close()
                    db.drop()
            results["runs"].append(run)
            save()
            print(f"results so far written to {args.out}", flush=True)
    save(status="done")
    print(f"results written to {args.out}")


if __name__ == "__main__":
    os.environ.setdefault("PERCORSO_STAGE_INTERVAL", "0")
    main()
