"""Survey results over many answers: ``python -m benchmarks.feedback [--answers N] [--engine E]``.

Writes N ``Survey Answered`` events for one NPS survey (scores 0-10, a comment on one in five)
and as many for another survey, with SQL, into a fresh store (and their typed copy, as the
collector makes it), then times
:func:`percorso.analytics.feedback.survey_results` (NPS with its interval, in total and by week)
and :func:`percorso.analytics.feedback.survey_comments` with a search, best of three each.
Results in ``benchmarks/results/feedback.json``.
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
INSERT INTO events (message_id, type, event, timestamp, received_at, channel, properties,
                    traits, context, integrations, identity_id, anonymous_id)
SELECT 'f' || i, 'track', 'Survey Answered', {start} + {step} * i, {start} + {step} * i, 'survey',
       CAST('{{"survey":"' || CASE WHEN mod(i, 2) = 0 THEN 'nps-main' ELSE 'nps-other' END ||
            '","kind":"nps","score":' || mod(i * 7, 11) ||
            CASE WHEN mod(i, 5) = 0 THEN ',"comment":"consegna ' || mod(i, 1000) || '"' ELSE '' END || '}}' AS {json}),
       CAST('{{}}' AS {json}), CAST('{{}}' AS {json}), CAST('{{}}' AS {json}), 1, 'a' || i
FROM {series}
"""

SURVEY = """
key: nps-main
name: Main
questions:
  - {id: score, kind: nps, text: "Recommend us?"}
  - {id: why, kind: open, text: "Why?"}
"""


def main() -> None:
    sys.path.insert(0, str(HERE.parent))
    from benchmarks.__main__ import PgDatabase, machine
    from percorso.analytics.feedback import survey_comments, survey_results
    from percorso.config import Settings
    from percorso.feedback.definition import load_survey
    from percorso.store import open_store
    from percorso.store.answers import copy_answers

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", type=int, default=1_000_000, help="answers to the measured survey")
    parser.add_argument("--engine", choices=["duckdb", "postgres"], default="duckdb")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "feedback.json")
    args = parser.parse_args()
    total = 2 * args.answers
    start = datetime(2026, 1, 1, tzinfo=UTC)
    step = 180 * 86400 / total  # spread over six months
    end = start + timedelta(days=181)
    pg = PgDatabase() if args.engine == "postgres" else None
    settings = Settings(
        data_dir=Path(tempfile.mkdtemp(prefix="percorso-feedback-")),
        database_url=pg.url if pg else "",
        automation_worker=False,
    )
    store = open_store(settings)
    survey = load_survey(SURVEY)
    timings: dict[str, Any] = {}
    try:
        t0 = time.perf_counter()
        with store.session() as s:
            if store.engine == "duckdb":
                values = {
                    "start": "TIMESTAMPTZ '2026-01-01 00:00:00+00'",
                    "step": f"INTERVAL {int(step * 1e6)} MICROSECOND",
                }
                series = f"range({total}) t(i)"
            else:
                values = {
                    "start": "TIMESTAMPTZ '2026-01-01 00:00:00+00'",
                    "step": f"INTERVAL '{int(step * 1e6)} microseconds'",
                }
                series = f"generate_series(0, {total} - 1) t(i)"
            s.execute(FILL.format(json=s.json_type, series=series, **values))
            # The typed copy the collector makes as it stores each answer (store/answers.py),
            # made here for all of them at once, as migration 14 does for answers stored before it.
            copy_answers(s)
            # Every answer belongs to one contact (comments name their contact).
            s.execute(
                "INSERT INTO contacts (contact_id, created_at, traits) VALUES (1, ?, CAST('{}' AS "
                + s.json_type
                + "))",
                [start],
            )
            s.execute(
                "INSERT INTO identities (identity_id, kind, value, contact_id, created_at) VALUES (1, 'anonymous_id', 'bench', 1, ?)",
                [start],
            )
        store.analyze()
        loaded = round(time.perf_counter() - t0, 1)
        print(f"{args.engine}: {total:,} answers written in {loaded} s", flush=True)
        for label, run in (
            ("NPS, total and by week", lambda: survey_results(store, survey, start, end)),
            (
                "50 newest comments matching a word",
                lambda: survey_comments(store, survey, start, end, q="consegna 90"),
            ),
        ):
            best, out = float("inf"), None
            for _ in range(3):
                t1 = time.perf_counter()
                out = run()
                best = min(best, time.perf_counter() - t1)
            timings[label] = round(best, 3)
            detail = (
                f"NPS {out['score']['nps']} of {out['score']['answers']:,}"
                if isinstance(out, dict)
                else f"{len(out)} rows"
            )
            print(f"  {label:38} {best:.3f} s   ({detail})", flush=True)
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
                "command": " ".join(["python -m benchmarks.feedback", *sys.argv[1:]]),
                "engine": args.engine,
                "answers_measured_survey": args.answers,
                "answers_total": total,
                "load_seconds": loaded,
                "seconds": timings,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
