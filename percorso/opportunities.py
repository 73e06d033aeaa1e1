"""Opportunities: what the team plans to do about a pain point (or about a stage of the journey),
with an owner, a priority and a status, so the journey map is also the team's backlog.

An opportunity belongs to a journey and, usually, to a stage and to one pain point, named by the
finding's ``key`` (the same problem found again in another period has the same key). The map
then shows, beside each opportunity, whether its pain point is still found in the period shown:
an opportunity marked done whose pain point is gone is a fix that worked.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from percorso.store import Store

PRIORITIES = ("high", "medium", "low")
STATUSES = ("idea", "planned", "in_progress", "done", "dropped")
OPEN = ("idea", "planned", "in_progress")
TITLE_MAX = 300
KEY_MAX = 500


class OpportunityError(ValueError):
    """A request to add or change an opportunity that cannot be kept, with the field at fault."""

    def __init__(self, field: str, message: str, status: int = 400):
        super().__init__(message)
        self.field = field
        self.message = message
        self.status = status


def _checked(values: dict[str, Any], users: set[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "title" in values:
        title = " ".join(str(values["title"] or "").split())
        if not title:
            raise OpportunityError("title", "say what the opportunity is (a title)")
        if len(title) > TITLE_MAX:
            raise OpportunityError(
                "title", f"a title holds at most {TITLE_MAX} characters ({len(title)} given)"
            )
        out["title"] = title
    if "priority" in values:
        if values["priority"] not in PRIORITIES:
            raise OpportunityError(
                "priority",
                f"priority is one of {', '.join(PRIORITIES)}, not {str(values['priority'])[:30]!r}",
            )
        out["priority"] = values["priority"]
    if "status" in values:
        if values["status"] not in STATUSES:
            raise OpportunityError(
                "status", f"status is one of {', '.join(STATUSES)}, not {str(values['status'])[:30]!r}"
            )
        out["status"] = values["status"]
    if "owner" in values:
        owner = (values["owner"] or "").strip().lower() or None
        if owner is not None and owner not in users:
            raise OpportunityError(
                "owner", f"{owner[:100]!r} is not a user of this dashboard: the owner is one of the team"
            )
        out["owner"] = owner
    return out


def _users(store: Store) -> set[str]:
    with store.session() as s:
        return {str(r[0]).lower() for r in s.rows("SELECT email FROM users")}


def add_opportunity(
    store: Store,
    journey_key: str,
    stage_key: str | None,
    title: str,
    *,
    by: str,
    pain_key: str | None = None,
    pain_summary: str | None = None,
    owner: str | None = None,
    priority: str = "medium",
    status: str = "idea",
    now: datetime | None = None,
) -> dict[str, Any]:
    """Keeps a new opportunity; ``stage_key`` must be a stage of the journey (None: the journey)."""
    from percorso.analytics.stages import StageError, get_journey

    try:
        journey = get_journey(store, journey_key)
    except StageError as exc:
        raise OpportunityError("journey", str(exc), 404) from None
    if stage_key is not None and stage_key not in {s.key for s in journey.stages}:
        raise OpportunityError("stage", f"the journey {journey_key} has no stage {stage_key[:63]!r}")
    if pain_key is not None and len(pain_key) > KEY_MAX:
        raise OpportunityError("pain", f"a pain point's key holds at most {KEY_MAX} characters")
    fields = _checked({"title": title, "priority": priority, "status": status, "owner": owner}, _users(store))
    now = now or datetime.now(UTC)
    opportunity_id = secrets.token_hex(8)
    with store.writing() as s:
        s.execute(
            "INSERT INTO opportunities (opportunity_id, journey_key, stage_key, pain_key, pain_summary, title, "
            "owner, priority, status, created_by, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                opportunity_id,
                journey_key,
                stage_key,
                pain_key or None,
                (pain_summary or "")[:1000] or None,
                fields["title"],
                fields["owner"],
                fields["priority"],
                fields["status"],
                by,
                now,
                now,
            ],
        )
    return get_opportunity(store, opportunity_id)


def update_opportunity(store: Store, opportunity_id: str, values: dict[str, Any]) -> dict[str, Any]:
    """Changes the title, owner, priority or status given in ``values``."""
    unknown = set(values) - {"title", "owner", "priority", "status"}
    if unknown:
        raise OpportunityError(sorted(unknown)[0], f"{sorted(unknown)[0]!r} cannot be changed here")
    fields = _checked(values, _users(store))
    get_opportunity(store, opportunity_id)  # 404 before anything changes
    if fields:
        with store.writing() as s:
            s.execute(
                f"UPDATE opportunities SET {', '.join(f'{k} = ?' for k in fields)}, updated_at = ? "
                "WHERE opportunity_id = ?",
                [*fields.values(), datetime.now(UTC), opportunity_id],
            )
    return get_opportunity(store, opportunity_id)


def _row(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": r["opportunity_id"],
        "journey": r["journey_key"],
        "stage": r["stage_key"],
        "pain_key": r["pain_key"],
        "pain_summary": r["pain_summary"],
        "title": r["title"],
        "owner": r["owner"],
        "priority": r["priority"],
        "status": r["status"],
        "created_by": r["created_by"],
        "created_at": r["created_at"].astimezone(UTC).isoformat(),
        "updated_at": r["updated_at"].astimezone(UTC).isoformat(),
    }


COLUMNS = (
    "opportunity_id, journey_key, stage_key, pain_key, pain_summary, title, owner, priority, status, "
    "created_by, created_at, updated_at"
)
#: Open ones first, then by priority, then the newest.
ORDER = (
    "CASE status WHEN 'in_progress' THEN 0 WHEN 'planned' THEN 1 WHEN 'idea' THEN 2 WHEN 'done' THEN 3 ELSE 4 END, "
    "CASE priority WHEN 'high' THEN 0 WHEN 'medium' THEN 1 ELSE 2 END, created_at DESC, opportunity_id"
)


def get_opportunity(store: Store, opportunity_id: str) -> dict[str, Any]:
    with store.session() as s:
        rows = s.dicts(f"SELECT {COLUMNS} FROM opportunities WHERE opportunity_id = ?", [opportunity_id])
    if not rows:
        raise OpportunityError("id", f"there is no opportunity {opportunity_id[:40]!r}", 404)
    return _row(rows[0])


def list_opportunities(
    store: Store, journey_key: str | None = None, *, status: str | None = None, owner: str | None = None
) -> list[dict[str, Any]]:
    """The opportunities (of a journey), open ones first; ``status`` may also be ``open``."""
    where, params = ["TRUE"], []
    if journey_key is not None:
        where.append("journey_key = ?")
        params.append(journey_key)
    if status == "open":
        where.append(f"status IN ({', '.join('?' for _ in OPEN)})")
        params += list(OPEN)
    elif status is not None:
        if status not in STATUSES:
            raise OpportunityError(
                "status", f"status is open or one of {', '.join(STATUSES)}, not {status[:30]!r}"
            )
        where.append("status = ?")
        params.append(status)
    if owner is not None:
        where.append("owner = ?")
        params.append(owner.lower())
    with store.session() as s:
        rows = s.dicts(
            f"SELECT {COLUMNS} FROM opportunities WHERE {' AND '.join(where)} ORDER BY {ORDER}", params
        )
    return [_row(r) for r in rows]
