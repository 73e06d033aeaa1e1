"""The stage engine: every contact's stage history in a journey, and the stage overview.

Stage history is derived from the contact's events (after identity resolution) by one SQL
statement per journey and stored in ``stage_entries``:

* **forward** journeys: a stage counts as entered when its entry criteria are first met before
  any later stage's — the contact's level is the running maximum, so skipped stages are not
  entered and nobody moves backwards;
* **loop** journeys: every event that meets a stage's criteria moves the contact to that stage
  (the highest one when several match); consecutive repeats collapse, so each lap shows.

``update`` recomputes only the contacts with events received since the last run (with a safety
margin for transactions that commit out of order) — the same statement restricted to those
contacts — so incremental updates and ``rebuild`` give identical tables by construction, and a
merge (an anonymous visitor identifying) simply recomputes the surviving contact.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from percorso.analytics.sql import EPOCH, MEMBERSHIPS, Sql, any_of, subject
from percorso.journey.definition import Journey, display, duration_seconds, load_journey
from percorso.store import Store
from percorso.store.base import Session

SAFETY_MARGIN = timedelta(minutes=2)  # transactions that committed out of received_at order
#: A track event that moves a contact into ``properties.stage`` of ``properties.journey`` (an
#: automation's ``move_stage`` step stores one; any source may send it). It is read like an event
#: meeting the stage's entry criteria, so a move survives ``update`` and ``rebuild``.
STAGE_MOVED = "Stage Moved"


class StageError(ValueError):
    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


def digest(journey: Journey) -> str:
    return hashlib.sha256(msgspec.json.encode(journey)).hexdigest()[:16]


# -- stored journeys ----------------------------------------------------------------------


def save_journey(store: Store, journey: Journey, source: str) -> dict[str, Any]:
    """Stores (or replaces) a journey definition; its stage history is rebuilt on next update."""
    now = datetime.now(UTC)
    with store.writing() as s:
        existing = s.rows("SELECT created_at FROM journeys WHERE journey_key = ?", [journey.key])
        s.execute("DELETE FROM journeys WHERE journey_key = ?", [journey.key])
        s.execute(
            "INSERT INTO journeys (journey_key, definition, source, digest, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [
                journey.key,
                msgspec.json.encode(journey).decode(),
                source,
                digest(journey),
                existing[0][0] if existing else now,
                now,
            ],
        )
    return {"key": journey.key, "digest": digest(journey), "created": not existing}


def get_journey(store: Store, key: str | None = None) -> Journey:
    with store.session() as s:
        if key is None:
            rows = s.rows("SELECT definition FROM journeys ORDER BY created_at, journey_key")
            if len(rows) > 1:
                keys = [r[0] for r in s.rows("SELECT journey_key FROM journeys ORDER BY created_at")]
                raise StageError("journey", f"several journeys are stored ({', '.join(keys)}): name one")
        else:
            rows = s.rows("SELECT definition FROM journeys WHERE journey_key = ?", [key])
    if not rows:
        raise StageError(
            "journey",
            f"no journey {key!r} is stored"
            if key
            else "no journey is stored: `percorso journey apply FILE` first",
        )
    raw = rows[0][0]
    return load_journey(raw if isinstance(raw, str) else msgspec.json.encode(raw).decode(), "store")


def list_journeys(store: Store) -> list[dict[str, Any]]:
    with store.session() as s:
        return s.dicts(
            "SELECT j.journey_key AS key, j.source, j.updated_at, p.through AS stages_through, "
            "(SELECT count(DISTINCT contact_id) FROM stage_entries se WHERE se.journey_key = j.journey_key) AS contacts "
            "FROM journeys j LEFT JOIN stage_progress p ON p.journey_key = j.journey_key ORDER BY j.created_at"
        )


# -- computing stage history --------------------------------------------------------------


def entries_sql(session: Session, journey: Journey, subject_filter: Sql | None = None) -> Sql:
    """SELECT (subject, seq, stage, stage_index, entered_at, left_at, message_id, channel): the
    subject is the contact, or the account in journeys that follow accounts."""
    subj = subject(journey.subject)
    params: list[Any] = []
    matches = []
    for k, stage in enumerate(journey.stages, 1):
        cond = any_of(session, stage.enter.any)
        moved = _moved(session, journey.key, stage.key)
        matches.append(f"CASE WHEN ({cond.text}) OR {moved.text} THEN 1 ELSE 0 END AS m{k}")
        params.extend(cond.params + moved.params)
        if stage.enter.at_least > 1:  # a move enters at once, whatever the count
            matches.append(f"CASE WHEN {moved.text} THEN 1 ELSE 0 END AS mv{k}")
            params.extend(moved.params)
    everything = any_of(session, [c for s in journey.stages for c in s.enter.any])
    any_move = _moved(session, journey.key)
    where = f"({everything.text} OR {any_move.text})"
    params.extend(everything.params + any_move.params)
    if subject_filter is not None:
        where += f" AND {subj.key} IN ({subject_filter.text})"
        params.extend(subject_filter.params)
    text = (
        f"WITH ev AS (SELECT {subj.key} AS cid, {EPOCH} AS ts, e.message_id AS mid, e.channel AS ch, "
        f"{', '.join(matches)} FROM {subj.events} WHERE {where})"
    )
    counted = []
    for k, stage in enumerate(journey.stages, 1):
        if stage.enter.at_least > 1:
            window = duration_seconds(stage.enter.within or "1d")
            counted.append(
                f"sum(m{k}) OVER (PARTITION BY cid ORDER BY ts RANGE BETWEEN CAST({window} AS DOUBLE PRECISION) "
                f"PRECEDING AND CURRENT ROW) AS c{k}"
            )
    text += f", counted AS (SELECT ev.*{''.join(', ' + c for c in counted)} FROM ev)"
    hits = []
    for k, stage in enumerate(journey.stages, 1):
        need = f" AND (c{k} >= {int(stage.enter.at_least)} OR mv{k} = 1)" if stage.enter.at_least > 1 else ""
        hits.append(f"SELECT cid, ts, mid, ch, {k} AS k FROM counted WHERE m{k} = 1{need}")
    text += f", hits AS ({' UNION ALL '.join(hits)})"
    if journey.progression == "forward":
        text += (
            ", firsts AS (SELECT cid, ts, mid, ch, k FROM (SELECT hits.*, row_number() OVER "
            "(PARTITION BY cid, k ORDER BY ts, mid) AS rn FROM hits) x WHERE rn = 1)"
            ", ranked AS (SELECT firsts.*, min(ts) OVER (PARTITION BY cid ORDER BY k DESC "
            "ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS later FROM firsts)"
            ", moves AS (SELECT cid, ts, mid, ch, k FROM ranked WHERE later IS NULL OR ts < later)"
        )
    else:
        text += (
            ", best AS (SELECT cid, ts, mid, ch, k FROM (SELECT hits.*, row_number() OVER "
            "(PARTITION BY cid, mid ORDER BY k DESC) AS rn FROM hits) x WHERE rn = 1)"
            ", seqd AS (SELECT best.*, lag(k) OVER (PARTITION BY cid ORDER BY ts, mid) AS prev FROM best)"
            ", moves AS (SELECT cid, ts, mid, ch, k FROM seqd WHERE prev IS NULL OR prev <> k)"
        )
    keys = " ".join(f"WHEN {k} THEN ?" for k in range(1, len(journey.stages) + 1))
    params.extend(s.key for s in journey.stages)
    text += (
        ", ordered AS (SELECT moves.*, row_number() OVER (PARTITION BY cid ORDER BY ts, k) AS seq, "
        "lead(ts) OVER (PARTITION BY cid ORDER BY ts, k) AS next_ts FROM moves) "
        f"SELECT cid AS subject_id, CAST(seq AS INTEGER) AS seq, CASE k {keys} END AS stage, CAST(k AS INTEGER) AS stage_index, "
        "to_timestamp(ts) AS entered_at, to_timestamp(next_ts) AS left_at, mid AS message_id, ch AS channel FROM ordered"
    )
    return Sql(text, params)


def _moved(session: Session, journey_key: str, stage_key: str | None = None) -> Sql:
    """The predicate of a :data:`STAGE_MOVED` event into this journey (and stage)."""
    journey, journey_param = session.json_text("e.properties", "journey")
    text = f"(e.event = ? AND {journey} = ?"
    params: list[Any] = [STAGE_MOVED, journey_param, journey_key]
    if stage_key is not None:
        stage, stage_param = session.json_text("e.properties", "stage")
        text += f" AND {stage} = ?"
        params += [stage_param, stage_key]
    return Sql(text + ")", params)


@dataclass
class UpdateReport:
    journey: str
    mode: str  # rebuild | incremental | unchanged
    subject: str  # contact | account: what `contacts` counts
    contacts: int
    entries: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def rebuild(store: Store, journey: Journey) -> UpdateReport:
    """Recomputes every contact's stage history for ``journey`` from scratch."""
    return _run(store, journey, full=True)


def update(store: Store, journey: Journey) -> UpdateReport:
    """Brings the stage history up to date with events received since the last run (a full
    rebuild the first time, or when the journey definition changed)."""
    return _run(store, journey, full=False)


def _run(store: Store, journey: Journey, *, full: bool) -> UpdateReport:
    import time

    started = time.perf_counter()
    subj = subject(journey.subject)
    table, column = subj.entries, subj.column
    with store.writing() as s:
        s.lock_named(f"stages:{journey.key}")  # several servers on one PostgreSQL: one updater at a time
        s.tune_for_analytics()
        high = s.rows("SELECT max(received_at) FROM events")[0][0]
        progress = s.rows("SELECT digest, through FROM stage_progress WHERE journey_key = ?", [journey.key])
        mode = "rebuild"
        if not full and progress and progress[0][0] == digest(journey):
            mode = "incremental"
        if mode == "rebuild":
            for entries in ("stage_entries", "account_stage_entries"):  # the subject may have changed
                s.execute(f"DELETE FROM {entries} WHERE journey_key = ?", [journey.key])
            select = entries_sql(s, journey)
        else:
            since = progress[0][1] - SAFETY_MARGIN
            affected = Sql(
                "SELECT DISTINCT i2.contact_id FROM events e2 JOIN identities i2 ON i2.identity_id = e2.identity_id "
                "WHERE e2.received_at >= ?",
                [since],
            )
            if subj.kind == "account":
                # the accounts of the contacts who acted (a merge may have joined a contact to more)
                affected = Sql(
                    f"SELECT DISTINCT am.gid FROM ({MEMBERSHIPS}) am WHERE am.cid IN ({affected.text})",
                    affected.params,
                )
            else:
                # Contacts merged into others since: their history now belongs to the survivor.
                s.execute(
                    "DELETE FROM stage_entries WHERE journey_key = ? AND contact_id IN "
                    "(SELECT contact_id FROM contacts WHERE merged_into IS NOT NULL)",
                    [journey.key],
                )
            s.execute(
                f"DELETE FROM {table} WHERE journey_key = ? AND {column} IN ({affected.text})",
                [journey.key, *affected.params],
            )
            select = entries_sql(s, journey, affected)
        s.execute(
            f"INSERT INTO {table} (journey_key, {column}, seq, stage, stage_index, entered_at, left_at, "
            f"message_id, channel) SELECT ?, x.* FROM ({select.text}) x",
            [journey.key, *select.params],
        )
        counts = s.rows(
            f"SELECT count(DISTINCT {column}), count(*) FROM {table} WHERE journey_key = ?",
            [journey.key],
        )[0]
        through = high or datetime.fromtimestamp(0, UTC)
        s.execute("DELETE FROM stage_progress WHERE journey_key = ?", [journey.key])
        s.execute(
            "INSERT INTO stage_progress (journey_key, digest, through, updated_at) VALUES (?, ?, ?, ?)",
            [journey.key, digest(journey), through, datetime.now(UTC)],
        )
    return UpdateReport(
        journey.key, mode, subj.kind, int(counts[0]), int(counts[1]), round(time.perf_counter() - started, 3)
    )


# -- reading it ---------------------------------------------------------------------------


def account_stages(store: Store, journey: Journey, account_id: str) -> list[dict[str, Any]]:
    """An account's stage history in a journey that follows accounts, oldest first."""
    if journey.subject != "account":
        raise StageError("journey", f"{journey.key} follows contacts, not accounts")
    with store.session() as s:
        return s.dicts(
            "SELECT seq, stage, stage_index, entered_at, left_at, message_id, channel FROM account_stage_entries "
            "WHERE journey_key = ? AND account_id = ? ORDER BY seq",
            [journey.key, account_id],
        )


def contact_stages(store: Store, journey: Journey, contact_id: int) -> list[dict[str, Any]]:
    """A contact's stage history, oldest first (merged ids resolve to the surviving contact)."""
    from percorso.store.contacts import resolve_contact

    with store.session() as s:
        live_id, _ = resolve_contact(s, contact_id)
        return s.dicts(
            "SELECT seq, stage, stage_index, entered_at, left_at, message_id, channel FROM stage_entries "
            "WHERE journey_key = ? AND contact_id = ? ORDER BY seq",
            [journey.key, live_id],
        )


def stage_overview(
    store: Store,
    journey: Journey,
    *,
    stuck_after: timedelta = timedelta(days=30),
    since: datetime | None = None,
    until: datetime | None = None,
    period: str = "week",
    lang: str = "en",
    contacts: Sql | None = None,
) -> dict[str, Any]:
    """Contacts per stage now and over time, stage-to-stage conversion, time in stage (median,
    p90), and how many contacts are stuck in each stage longer than ``stuck_after``."""
    if period not in ("day", "week"):
        raise StageError("period", "day or week")
    now = until or datetime.now(UTC)
    start = since or now - timedelta(days=182)
    if start >= now:
        raise StageError("since", "must be before until")
    size = 86_400 if period == "day" else 7 * 86_400
    subj = subject(journey.subject)
    table, column = subj.entries, subj.column
    only = f" AND {column} IN ({contacts.text})" if contacts else ""
    fp = contacts.params if contacts else []
    with store.session() as s:
        s.tune_for_analytics()
        # One scan for the figures per stage. Entries of a contact are contiguous (an entry's
        # left_at is the next one's entered_at), so the stage a contact is in at `now` is the entry
        # spanning `now`, and an entry was followed by another exactly when left_at is set — in a
        # forward journey always a higher stage.
        in_period = "entered_at >= ? AND entered_at < ?"
        # A forward journey enters each stage at most once per contact: no need to deduplicate.
        distinct = "DISTINCT " if journey.progression == "loop" else ""
        per_stage = {
            r["stage_index"]: r
            for r in s.dicts(
                "SELECT stage_index, "
                "sum(CASE WHEN left_at IS NULL OR left_at > ? THEN 1 ELSE 0 END) AS current, "
                "sum(CASE WHEN (left_at IS NULL OR left_at > ?) AND entered_at < ? THEN 1 ELSE 0 END) AS stuck, "
                f"count({distinct}CASE WHEN {in_period} THEN {column} END) AS entered, "
                f"count({distinct}CASE WHEN {in_period} AND left_at IS NOT NULL THEN {column} END) AS moved_on, "
                f"percentile_cont(0.5) WITHIN GROUP (ORDER BY CASE WHEN {in_period} "
                "THEN extract(epoch FROM left_at - entered_at) END) AS median_s, "
                f"percentile_cont(0.9) WITHIN GROUP (ORDER BY CASE WHEN {in_period} "
                "THEN extract(epoch FROM left_at - entered_at) END) AS p90_s "
                f"FROM {table} WHERE journey_key = ? AND entered_at <= ?{only} GROUP BY stage_index",
                [now, now, now - stuck_after, *[start, now] * 4, journey.key, now, *fp],
            )
        }
        entered = per_stage
        moved_on = {k: int(r["moved_on"] or 0) for k, r in per_stage.items()}
        # Contacts in each stage at the end of every period with entries: those who entered it by
        # then minus those who left it by then (a running sum over small per-period counts).
        bucket = "CAST(floor((extract(epoch FROM {}) - ?) / ?) AS BIGINT)"
        trend_rows = s.rows(
            f"WITH bounds AS (SELECT DISTINCT {bucket.format('entered_at')} AS b "
            f"FROM {table} WHERE journey_key = ? AND entered_at >= ? AND entered_at < ?), "
            f"moves AS (SELECT {bucket.format('entered_at')} AS b, stage_index, 1 AS d FROM {table} "
            f"WHERE journey_key = ?{only} UNION ALL SELECT {bucket.format('left_at')} AS b, stage_index, -1 AS d "
            f"FROM {table} WHERE journey_key = ? AND left_at IS NOT NULL{only}), "
            "net AS (SELECT b, stage_index, sum(d) AS d FROM moves GROUP BY b, stage_index) "
            "SELECT bounds.b, net.stage_index, sum(net.d) FROM bounds JOIN net ON net.b <= bounds.b "
            "GROUP BY bounds.b, net.stage_index HAVING sum(net.d) <> 0 ORDER BY 1, 2",
            [
                _offset(period), size, journey.key, start, now,
                _offset(period), size, journey.key, *fp,
                _offset(period), size, journey.key, *fp,
            ],
        )  # fmt: skip
    stages = []
    for k, stage in enumerate(journey.stages, 1):
        cur = per_stage.get(k, {})
        ent = entered.get(k, {})
        n_entered = int(ent.get("entered") or 0)
        stages.append(
            {
                "stage": stage.key,
                "name": display(stage.name, lang),
                "index": k,
                "current_contacts": int(cur.get("current") or 0),
                "entered_in_period": n_entered,
                "moved_on": moved_on.get(k, 0)
                if k < len(journey.stages) or journey.progression == "loop"
                else None,
                "conversion_to_next": (
                    round(moved_on.get(k, 0) / n_entered, 4)
                    if n_entered and (k < len(journey.stages) or journey.progression == "loop")
                    else None
                ),
                "median_seconds_in_stage": _round(ent.get("median_s")),
                "p90_seconds_in_stage": _round(ent.get("p90_s")),
                "stuck": int(cur.get("stuck") or 0),
            }
        )
    keys = {k: s.key for k, s in enumerate(journey.stages, 1)}
    over_time: dict[int, dict[str, int]] = {}
    for b, k, n in trend_rows:
        over_time.setdefault(int(b), {key: 0 for key in keys.values()})[keys[int(k)]] = int(n)
    return {
        "journey": journey.key,
        "subject": subj.kind,
        "progression": journey.progression,
        "period": {"start": start.isoformat(), "end": now.isoformat()},
        "stuck_after_seconds": int(stuck_after.total_seconds()),
        "stages": stages,
        "over_time": [
            {
                "period_end": datetime.fromtimestamp((b + 1) * size + _offset(period), UTC)
                .date()
                .isoformat(),
                "contacts": v,
            }
            for b, v in sorted(over_time.items())
        ],
        "notes": f"counts are {subj.noun}; time in stage counts {subj.noun} who have left the stage; moved_on "
        f"counts {subj.noun} whose next stage entry (a higher stage in forward journeys) followed an entry in "
        "the period",
    }


def stuck_contacts(
    store: Store,
    journey: Journey,
    stage: str,
    stuck_after: timedelta,
    limit: int = 1000,
    as_of: datetime | None = None,
) -> list[dict[str, Any]]:
    """Contacts (accounts, in journeys that follow accounts: ``account_id`` instead of
    ``contact_id`` and ``email``) whose current stage is ``stage`` and who entered it longer than
    ``stuck_after`` ago."""
    if stage not in journey.stage_keys():
        raise StageError(
            "stage", f"{stage!r} is not a stage of {journey.key} ({', '.join(journey.stage_keys())})"
        )
    cutoff = (as_of or datetime.now(UTC)) - stuck_after
    if journey.subject == "account":
        with store.session() as s:
            return s.dicts(
                "WITH cur AS (SELECT account_id, stage, entered_at, row_number() OVER (PARTITION BY account_id "
                "ORDER BY seq DESC) AS rn FROM account_stage_entries WHERE journey_key = ?) "
                "SELECT account_id, entered_at FROM cur WHERE rn = 1 AND stage = ? AND entered_at < ? "
                "ORDER BY entered_at, account_id LIMIT ?",
                [journey.key, stage, cutoff, limit],
            )
    with store.session() as s:
        return s.dicts(
            "WITH cur AS (SELECT contact_id, stage, entered_at, row_number() OVER (PARTITION BY contact_id "
            "ORDER BY seq DESC) AS rn FROM stage_entries WHERE journey_key = ?) "
            "SELECT cur.contact_id, cur.entered_at, (SELECT min(value) FROM identities WHERE contact_id = cur.contact_id "
            "AND kind = 'email') AS email FROM cur WHERE rn = 1 AND stage = ? AND entered_at < ? "
            "ORDER BY cur.entered_at, cur.contact_id LIMIT ?",
            [journey.key, stage, cutoff, limit],
        )


def _offset(period: str) -> int:
    return 0 if period == "day" else 4 * 86_400


def _round(value: Any) -> float | None:
    return None if value is None else round(float(value), 1)
