"""Attribution at scale: ``python -m benchmarks.attribution [--contacts N] [--no-postgres]``.

Generates the journey-shaped dataset of :mod:`benchmarks.analytics` (about ten events a contact;
a third of the contacts arrive from ads, a third from search, a third direct, and come back over
the following days; a fifth identify, so events hang off two identifiers) straight into a DuckDB
store, then times :func:`percorso.analytics.attribution.attribution` — every model, for the
orders of the whole period, by channel, 30-day lookback — on DuckDB (best of three) and, loaded
with COPY, on PostgreSQL (best of two), and checks that both give the same credit to the cent.
Results go to ``benchmarks/results/attribution.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.__main__ import RESULTS, machine
from benchmarks.analytics import DAYS, END, generate, load, peak_rss_mib, to_postgres


def timed(store: Any, repeat: int) -> tuple[float, dict[str, Any]]:
    from percorso.analytics.attribution import AttributionSpec, attribution
    from percorso.analytics.funnel import parse_step

    spec = AttributionSpec(
        conversion=parse_step("Order Completed").condition,
        start=END - timedelta(days=DAYS + 1),
        end=END + timedelta(days=1),
    )
    best, result = float("inf"), {}
    for _ in range(repeat):
        started = time.perf_counter()
        result = attribution(store, spec)
        best = min(best, time.perf_counter() - started)
    return round(best, 2), result


def summary(seconds: float, result: dict[str, Any]) -> dict[str, Any]:
    return {
        "attribution_s": seconds,
        "conversions": result["conversions"],
        "paths_not_converting": result["paths_not_converting"],
        "touches_per_conversion": result["touches_per_conversion"],
        "values": {
            row["value"]: {m: round(v, 1) for m, v in row["conversions"].items()} for row in result["values"]
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.attribution", description=__doc__)
    parser.add_argument("--contacts", type=int, default=1_000_000, help="contacts (~10 events each)")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "attribution.json")
    args = parser.parse_args()
    from percorso.store.duckdb import DuckDBStore

    out: dict[str, Any] = {
        "machine": machine(),
        "started": datetime.now(UTC).isoformat(),
        "command": " ".join(["python -m benchmarks.attribution", *sys.argv[1:]]),
        "load_at_start": load(),
        "contacts": args.contacts,
    }
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        path = tmp / "percorso.duckdb"
        store = DuckDBStore(path)
        store.migrate()
        with store.writing() as s:
            out["events"] = generate(s.con, args.contacts)  # type: ignore[attr-defined]
        print(f"{args.contacts:,} contacts, {out['events']:,} events", flush=True)
        seconds, duck = timed(store, 3)
        out["duckdb"] = {**summary(seconds, duck), "load_after": load()}
        print(f"duckdb: {seconds} s, {duck['conversions']:,} conversions", flush=True)
        store.close()
        if not args.no_postgres:
            db, pg = to_postgres(path, tmp)
            try:
                seconds, result = timed(pg, 2)
                out["postgres"] = {**summary(seconds, result), "load_after": load()}
                print(f"postgres: {seconds} s", flush=True)
                out["identical_results"] = json.dumps(result["values"], sort_keys=True) == json.dumps(
                    duck["values"], sort_keys=True
                )
            finally:
                pg.close()
                db.drop()
    out["peak_rss_mib"] = peak_rss_mib()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k in ("events", "identical_results")}))
    if out.get("identical_results") is False:
        sys.exit(1)


if __name__ == "__main__":
    main()
