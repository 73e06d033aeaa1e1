"""Pain points against planted frictions: ``python -m benchmarks.painpoints [--visitors N] [--seeds 1 2 3]``.

Generates the shop of :mod:`benchmarks.planted` (four planted frictions, and traps that are not
frictions) in every event-naming style and for every seed, loads it through the collector's
parser into a fresh embedded store, runs ``find_pain_points`` at its **default settings** (the
segments found in the data) with a journey written in the data's own names, and scores the
findings against the planted truth:

* **recall**: planted frictions found, at the right transition and segment; a dated friction also
  within 3 days of its start and of its end;
* **false findings in the top 5**: findings that match no planted friction, among the five ranked
  first (an error or support finding at the payment incident's step counts as that incident);
* **notes**: what the answer says about the data (orders stamped in the payment's second or before
  it starve the ordered funnel: the answer must say so);
* **run time** of ``find_pain_points`` (best of three calls, and the first) on the scored datasets, and with ``--timing-visitors``
  (default about 1M events) on one larger dataset.

Results in ``benchmarks/results/painpoints.json``; the process exits non-zero when a target is
missed (recall < 90%, more than one false finding in any top 5, an incident dated more than 3
days off).
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

JOURNEY = """\
version: 1
key: shop
name: Shop
stages:
  - {{key: browse, name: Browse, enter: {{any: [{{event: "{0}"}}]}}}}
  - {{key: buy, name: Buy, enter: {{any: [{{event: "{4}"}}]}}}}
funnels:
  - key: checkout
    name: Checkout
    window: 7d
    steps: [{{event: "{0}"}}, {{event: "{1}"}}, {{event: "{2}"}}, {{event: "{3}"}}, {{event: "{4}"}}]
"""


def load(store: Any, visitors: int, seed: int, style: str) -> int:
    from benchmarks.planted import events
    from percorso.channels import ChannelClassifier, load_rules
    from percorso.events import parse_message

    classifier = ChannelClassifier(load_rules())
    now = datetime.now(UTC)
    batch, total = [], 0
    for message in events(visitors, seed, style):
        batch.append(parse_message(json.dumps(message).encode(), received_at=now, classifier=classifier))
        if len(batch) >= 50_000:
            total += len(store.ingest(batch))
            batch = []
    total += len(store.ingest(batch))
    return total


def score(findings: list[dict[str, Any]], truth: list[dict[str, Any]]) -> dict[str, Any]:
    from benchmarks.planted import days_apart

    def matches(p: dict[str, Any], t: dict[str, Any]) -> bool:
        if p["kind"] in ("errors", "support"):  # trouble after the payment: the incident, seen again
            return t["start"] is not None and t["segment"] is None and p["step_index"] == t["step_index"]
        if p["step_index"] != t["step_index"] or (p["segment"] or None) != t["segment"]:
            return False
        if t["start"] is None:
            return p["kind"] in ("dropoff", "slow") or (p["kind"] == "dip" and p["when"]["from_period_start"])
        return p["kind"] == "dip"

    found: dict[str, dict[str, Any]] = {}
    false: list[dict[str, Any]] = []
    for p in findings:
        hits = [t for t in truth if matches(p, t)]
        if not hits:
            false.append(p)
            continue
        t = hits[0]
        if p["kind"] == "dip" and t["start"] is not None:
            start = datetime.fromisoformat(p["when"]["start"]).date()
            end = datetime.fromisoformat(p["when"]["end"]).date()
            error = max(days_apart(start, t["start"]), days_apart(end, t["end"]))
            if t["name"] not in found or error < found[t["name"]]["days_off"]:
                found[t["name"]] = {"rank": p["rank"], "days_off": error, "when": p["when"]}
        elif t["name"] not in found:
            found[t["name"]] = {"rank": p["rank"], "days_off": 0, "kind": p["kind"]}
    top5_false = [p for p in false if p["rank"] <= 5]
    recalled = [name for name, f in found.items() if f["days_off"] <= 3]
    return {
        "planted": len(truth),
        "found": found,
        "recall": len(recalled) / len(truth),
        "false_in_top5": len(top5_false),
        "false": [
            {
                "rank": p["rank"],
                "kind": p["kind"],
                "step": p["step"],
                "segment": p["segment"],
                "when": p["when"],
            }
            for p in false
        ],
        "findings": len(findings),
        "max_days_off": max(
            (f["days_off"] for f in found.values() if f["days_off"] != float("inf")), default=0
        ),
    }


def run_one(visitors: int, seed: int, style: str) -> dict[str, Any]:
    from benchmarks.planted import DAYS, START, STEPS, name, truth
    from percorso.analytics.painpoints import find_pain_points
    from percorso.journey import load_journey
    from percorso.store.duckdb import DuckDBStore

    with tempfile.TemporaryDirectory() as tmp:
        store = DuckDBStore(Path(tmp) / "percorso.duckdb")
        store.migrate()
        t0 = time.perf_counter()
        events = load(store, visitors, seed, style)
        loaded = time.perf_counter() - t0
        journey = load_journey(JOURNEY.format(*(name(s, style) for s in STEPS)))
        end = START + timedelta(days=DAYS)
        seconds = []  # the first call (nothing cached by the engine yet), then two more
        for _ in range(3):
            t0 = time.perf_counter()
            result = find_pain_points(store, journey, start=START, end=end, as_of=end + timedelta(days=30))
            seconds.append(time.perf_counter() - t0)
        store.close()
    return {
        "seed": seed,
        "style": style,
        "visitors": visitors,
        "events": events,
        "load_seconds": round(loaded, 1),
        "painpoints_seconds": round(min(seconds), 2),
        "painpoints_first_seconds": round(seconds[0], 2),
        "dimensions": result["dimensions"],
        "notes": [n["summaries"]["en"] for n in result["notes"]],
        **score(result["pain_points"], truth()),
        "top5": [
            {"kind": p["kind"], "step": p["step"], "segment": p["segment"], "when": p["when"]}
            for p in result["pain_points"][:5]
        ],
    }


def main() -> None:
    sys.path.insert(0, str(HERE.parent))
    from benchmarks.__main__ import machine

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visitors", type=int, default=30_000, help="visitors per scored dataset")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--styles", nargs="+", default=["title", "snake", "kebab"])
    parser.add_argument(
        "--timing-visitors", type=int, default=150_000, help="visitors of the timed dataset (0: none)"
    )
    parser.add_argument("--out", type=Path, default=HERE / "results" / "painpoints.json")
    args = parser.parse_args()
    results: dict[str, Any] = {"machine": machine(), "command": " ".join(sys.argv), "runs": []}
    for seed in args.seeds:
        for style in args.styles:
            run = run_one(args.visitors, seed, style)
            results["runs"].append(run)
            print(
                f"seed {seed} {style:5}: recall {run['recall']:.0%}, false in top 5 {run['false_in_top5']}, "
                f"dated within {run['max_days_off']} days, {run['events']:,} events, "
                f"{run['painpoints_seconds']} s",
                flush=True,
            )
    if args.timing_visitors:
        timed = run_one(args.timing_visitors, 99, "title")
        keys = ("events", "painpoints_seconds", "painpoints_first_seconds", "recall", "false_in_top5")
        results["timing"] = {k: timed[k] for k in keys}
        print(
            f"timing: {timed['events']:,} events, find_pain_points {timed['painpoints_seconds']} s "
            f"(best of 3; the first {timed['painpoints_first_seconds']} s)",
            flush=True,
        )
    runs = results["runs"]
    results["summary"] = {
        "recall_min": min(r["recall"] for r in runs),
        "recall_mean": round(sum(r["recall"] for r in runs) / len(runs), 3),
        "false_in_top5_max": max(r["false_in_top5"] for r in runs),
        "days_off_max": max(r["max_days_off"] for r in runs),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(json.dumps(results["summary"]))
    s = results["summary"]
    if s["recall_mean"] < 0.9 or s["false_in_top5_max"] > 1 or s["days_off_max"] > 3:
        sys.exit(1)


if __name__ == "__main__":
    main()
