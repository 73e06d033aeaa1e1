"""What an erasure costs on the embedded store: the logical erasure of one contact, then the
rewrite of the DuckDB file that takes the deleted bytes out (at the next open, or at once from
`percorso contacts erase`), over the analytics benchmark's generated data.

    .venv/bin/python -m benchmarks.erasure --contacts 100000 1000000

Results in benchmarks/results/erasure.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.__main__ import RESULTS, machine
from benchmarks.analytics import generate, peak_rss_mib
from percorso.store.contacts import erase_contact
from percorso.store.duckdb import DuckDBStore


def run(contacts: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmpdir:
        path = Path(tmpdir) / "percorso.duckdb"
        store = DuckDBStore(path)
        store.migrate()
        with store.writing() as s:
            events = generate(s.con, contacts)  # type: ignore[attr-defined]
        store.checkpoint()
        with store.session() as s:
            # The contact with the most events: the largest single erasure in the data.
            [[victim, own]] = s.rows(
                "SELECT i.contact_id, count(*) AS n FROM events e JOIN identities i ON i.identity_id = e.identity_id "
                "GROUP BY 1 ORDER BY n DESC, 1 LIMIT 1"
            )
        started = time.perf_counter()
        erased = erase_contact(store, int(victim))
        erase_s = time.perf_counter() - started
        assert erased["events"] == own
        report = store.compact()
        with store.session() as s:
            left = int(s.rows("SELECT count(*) FROM events")[0][0])
        store.close()
        assert left == events - own
        return {
            "contacts": contacts,
            "events": events,
            "erased_events": int(own),
            "erase_s": round(erase_s, 3),
            "compact_s": report["seconds"],
            "file_mib_before": round(report["bytes_before"] / 2**20, 1),
            "file_mib_after": round(report["bytes_after"] / 2**20, 1),
            "peak_rss_mib": peak_rss_mib(),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--contacts", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--out", type=Path, default=RESULTS / "erasure.json")
    args = parser.parse_args()
    results: dict[str, Any] = {
        "machine": machine(),
        "started": datetime.now(UTC).isoformat(),
        "command": " ".join(["python -m benchmarks.erasure", *sys.argv[1:]]),
        "runs": [],
    }
    for contacts in args.contacts:
        result = run(contacts)
        print(json.dumps(result), flush=True)
        results["runs"].append(result)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
