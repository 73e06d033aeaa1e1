"""What validating one message costs, in-process: ``python -m benchmarks.parse [--baseline REF]``.

The HTTP ingest figures move by up to a quarter between runs on a shared VM, too much to see a
few percent. This times :func:`percorso.events.parse_message` alone over realistic messages
(analytics.js-shaped page views and tracks with properties, context and campaign, identifies with
traits), best of several rounds, and with ``--baseline`` runs the same script on the code of
another commit, alternating with this tree, so both see the same machine at the same time.
Results go to ``benchmarks/results/parse.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
RESULTS = HERE / "results"


def messages(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        context = {
            "library": {"name": "analytics.js", "version": "next-1.70.0"},
            "page": {
                "path": f"/products/{i % 50}",
                "referrer": "https://www.google.com/",
                "search": "?utm_source=newsletter&utm_medium=email",
                "title": "Scarpe da corsa",
                "url": f"https://shop.example/products/{i % 50}?utm_source=newsletter&utm_medium=email",
            },
            "userAgent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36",
            "locale": "it-IT",
            "campaign": {"source": "newsletter", "medium": "email", "name": "autunno"},
        }
        kind = ("page", "track", "track", "identify")[i % 4]
        message: dict[str, Any] = {
            "type": kind,
            "messageId": f"ajs-next-{i:012d}",
            "anonymousId": f"anon-{i % 997}",
            "timestamp": "2026-11-30T10:00:00.000Z",
            "sentAt": "2026-11-30T10:00:00.100Z",
            "context": context,
            "integrations": {},
        }
        if kind == "track":
            message["event"] = "Product Viewed"
            message["properties"] = {
                "product_id": f"sku-{i}",
                "price": 89.9,
                "currency": "EUR",
                "quantity": 1,
            }
        elif kind == "page":
            message["name"] = "Product"
            message["properties"] = {"path": context["page"]["path"], "title": "Scarpe da corsa"}
        else:
            message["userId"] = f"u{i}"
            message["traits"] = {"email": f"u{i}@example.it", "firstName": "Giulia", "plan": "member"}
        out.append(json.dumps(message).encode())
    return out


def measure(rounds: int, n: int) -> dict[str, Any]:
    """Events/s parsing ``n`` messages, best of ``rounds`` (this process's code)."""
    from percorso.channels import ChannelClassifier, load_rules
    from percorso.events import Limits, parse_message

    classifier = ChannelClassifier(load_rules())
    limits = Limits()
    batch = messages(n)
    received = datetime.now(UTC)
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for data in batch:
            parse_message(data, received_at=received, classifier=classifier, limits=limits)
        best = min(best, time.perf_counter() - started)
    import percorso

    return {
        "code": str(Path(percorso.__file__).parent.parent),
        "events": n,
        "rounds": rounds,
        "best_s": round(best, 4),
        "events_per_s": round(n / best),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", metavar="REF", help="also time the code of git REF, alternating")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--alternations", type=int, default=5)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS / "parse.json")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.rounds, args.events)))
        return
    sys.path.insert(0, str(HERE.parent))
    from benchmarks.__main__ import baseline_tree, machine

    trees: list[tuple[str, Path]] = [("this tree", HERE.parent)]
    if args.baseline:
        trees.insert(0, (args.baseline, baseline_tree(args.baseline)))
    runs: dict[str, list[int]] = {label: [] for label, _ in trees}
    for _ in range(args.alternations):
        for label, tree in trees:
            env = {**os.environ, "PYTHONPATH": str(tree)}
            child = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--child", "--rounds", str(args.rounds),
                 "--events", str(args.events)],
                env=env, cwd=tree, check=True, capture_output=True, text=True,
            )  # fmt: skip
            measured = json.loads(child.stdout)
            assert Path(measured["code"]).is_relative_to(tree), (measured["code"], tree)
            runs[label].append(measured["events_per_s"])
    summary = {label: {"runs": values, "best_events_per_s": max(values)} for label, values in runs.items()}
    result: dict[str, Any] = {
        "machine": machine(),
        "started": datetime.now(UTC).isoformat(),
        "command": " ".join(["python -m benchmarks.parse", *sys.argv[1:]]),
        "results": summary,
    }
    if args.baseline:
        before = summary[args.baseline]["best_events_per_s"]
        after = summary["this tree"]["best_events_per_s"]
        result["change"] = round(after / before - 1, 4)
    for label, values in summary.items():
        print(f"{label:>12}: best {values['best_events_per_s']:,} events/s  runs {values['runs']}")
    if "change" in result:
        print(f"change: {result['change']:+.1%}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
