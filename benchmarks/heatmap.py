"""The heatmap query over millions of click events: ``python -m benchmarks.heatmap [--events N]``.

Writes N ``Heatmap Click`` events (as percorso.js sends them: selector, x, y, width, rage, dead,
band in the properties) and N / 10 ``Page Scrolled`` events into a fresh embedded DuckDB store,
with SQL (loading 10M through HTTP would take the collector minutes and is measured elsewhere),
then their typed copy in ``heatmap_clicks`` (store/clicks.py);
half the clicks are on ``/checkout``, the rest over 99 other pages. Then times
:func:`percorso.analytics.heatmap.heatmap` for ``/checkout`` (half the clicks), for one of the
small pages, and for every page at once (``*``), best of three each. PostgreSQL with
``--engine postgres``. Results in ``benchmarks/results/heatmap.json``.
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

HERE = Path(__file__).parent

FILL = """
INSERT INTO events (message_id, type, event, timestamp, received_at, channel, page_path, properties,
                    traits, context, integrations, identity_id, anonymous_id)
SELECT 'h' || i, 'track', 'Heatmap Click',
       {start} + {step} * i, {start} + {step} * i, 'web',
       CASE WHEN mod(i, 2) = 0 THEN '/checkout' ELSE '/p/' || mod(i, 99) END,
       CAST('{{"selector":"#el' || mod(i, 40) || '","x":' || mod(i * 7919, 1200) || ',"y":' || mod(i * 104729, 4000)
            || ',"width":1200,"height":4000,"rx":0.5,"ry":0.5,"band":"' ||
            CASE WHEN mod(i, 5) = 0 THEN 'mobile' ELSE 'desktop' END || '","rage":' ||
            CASE WHEN mod(i, 97) = 0 THEN 'true' ELSE 'false' END || ',"dead":' ||
            CASE WHEN mod(i, 13) = 0 THEN 'true' ELSE 'false' END || '}}' AS {json}),
       CAST('{{}}' AS {json}), CAST('{{}}' AS {json}), CAST('{{}}' AS {json}), 1, 'a' || mod(i, 100000)
FROM {series}
"""

SCROLLS = """
INSERT INTO events (message_id, type, event, timestamp, received_at, channel, page_path, properties,
                    traits, context, integrations, identity_id, anonymous_id)
SELECT 's' || i, 'track', 'Page Scrolled', {start} + {step} * i, {start} + {step} * i, 'web',
       CASE WHEN mod(i, 2) = 0 THEN '/checkout' ELSE '/p/' || mod(i, 99) END,
       CAST('{{"depth":' || mod(i, 101) || ',"band":"desktop"}}' AS {json}),
       CAST('{{}}' AS {json}), CAST('{{}}' AS {json}), CAST('{{}}' AS {json}), 1, 'a' || mod(i, 100000)
FROM {series}
"""


def fill(store: Any, events: int, start: datetime) -> float:
    from percorso.store.clicks import copy_clicks

    started = time.perf_counter()
    with store.session() as s:
        if store.engine == "duckdb":
            values = {"start": "TIMESTAMPTZ '2026-06-01 00:00:00+00'", "step": "INTERVAL 1 SECOND"}
            series = "range({n}) t(i)"
        else:
            values = {"start": "TIMESTAMPTZ '2026-06-01 00:00:00+00'", "step": "INTERVAL '1 second'"}
            series = "generate_series(0, {n} - 1) t(i)"
        for sql, n in ((FILL, events), (SCROLLS, events // 10)):
            s.execute(sql.format(json=s.json_type, series=series.format(n=n), **values))
        # The typed copy the collector makes of each click as it stores it, made here for all of
        # them at once (as migration 11 does for clicks stored before it).
        copy_clicks(s)
    store.analyze()
    return round(time.perf_counter() - started, 1)


def main() -> None:
    sys.path.insert(0, str(HERE.parent))
    from benchmarks.__main__ import PgDatabase, machine
    from percorso.analytics.heatmap import heatmap
    from percorso.config import Settings
    from percorso.store import open_store

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--engine", choices=["duckdb", "postgres"], default="duckdb")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "heatmap.json")
    args = parser.parse_args()
    start = datetime(2026, 6, 1, tzinfo=UTC)
    end = start + timedelta(seconds=args.events + 1)
    workdir = Path(tempfile.mkdtemp(prefix="percorso-heatmap-"))
    pg = PgDatabase() if args.engine == "postgres" else None
    settings = Settings(data_dir=workdir, database_url=pg.url if pg else "", automation_worker=False)
    store = open_store(settings)
    try:
        loaded = fill(store, args.events, start)
        print(
            f"{args.engine}: {args.events:,} clicks and {args.events // 10:,} scrolls written in {loaded} s",
            flush=True,
        )
        timings: dict[str, Any] = {}
        for label, page in (
            ("checkout (half the clicks)", "/checkout"),
            ("one small page", "/p/7"),
            ("every page", "*"),
        ):
            best, result = float("inf"), None
            for _ in range(3):
                t0 = time.perf_counter()
                result = heatmap(store, page, start, end, band="desktop")
                best = min(best, time.perf_counter() - t0)
            assert result is not None
            timings[label] = {"page": page, "seconds": round(best, 3), "clicks": result["clicks"]}
            print(f"  {label:28} {result['clicks']:>10,} clicks   {best:.3f} s", flush=True)
    finally:
        store.close()
        if pg:
            pg.drop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "machine": machine(),
                "started": datetime.now(UTC).isoformat(),
                "command": " ".join(["python -m benchmarks.heatmap", *sys.argv[1:]]),
                "engine": args.engine,
                "events": args.events,
                "load_seconds": loaded,
                "results": timings,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
