"""Compiling journey conditions to SQL predicates over ``events e`` (shared by both engines)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from percorso.journey.definition import Condition
from percorso.store.base import Session, like_literal

# The event columns a condition field matches, and the resolved contact of an event.
_COLUMNS = {
    "event": "e.event",
    "type": "e.type",
    "page": "e.page_path",
    "name": "e.name",
    "channel": "e.channel",
}
RESOLVED_EVENTS = "events e JOIN identities i ON i.identity_id = e.identity_id"
EPOCH = "CAST(extract(epoch FROM e.timestamp) AS DOUBLE PRECISION)"
# What the customer did, as opposed to the events percorso records for its own actions (an email
# sent by an automation comes back as a touchpoint with this library).
AUTOMATION_LIBRARY = "percorso-automation"
CUSTOMER_EVENT = f"(e.library IS NULL OR e.library <> '{AUTOMATION_LIBRARY}')"


# Which accounts (Segment `group` ids) each contact belongs to: every group id a contact's events
# carry (group calls, or any call with a groupId), resolved at query time like identities.
MEMBERSHIPS = (
    "SELECT DISTINCT mi.contact_id AS cid, me.group_id AS gid FROM events me "
    "JOIN identities mi ON mi.identity_id = me.identity_id WHERE me.group_id IS NOT NULL"
)


@dataclass(frozen=True)
class Subject:
    """Whom a journey follows: contacts (people, after identity resolution) or accounts (B2B:
    an event counts for the account named by its groupId, else for every account its contact
    belongs to). ``events`` is the FROM clause over ``events e`` in which ``key`` is the
    subject's id; ``entries`` and ``column`` name the stage history table."""

    kind: str
    events: str
    key: str
    entries: str
    column: str

    @property
    def noun(self) -> str:
        return "accounts" if self.kind == "account" else "contacts"


CONTACT = Subject("contact", RESOLVED_EVENTS, "i.contact_id", "stage_entries", "contact_id")
ACCOUNT = Subject(
    "account",
    f"{RESOLVED_EVENTS} JOIN ({MEMBERSHIPS}) m ON m.cid = i.contact_id "
    "AND (e.group_id IS NULL OR m.gid = e.group_id)",
    "m.gid",
    "account_stage_entries",
    "account_id",
)


def subject(kind: str) -> Subject:
    return ACCOUNT if kind == "account" else CONTACT


@dataclass
class Sql:
    """A SQL fragment and its ``?`` parameters, in order."""

    text: str
    params: list[Any] = field(default_factory=list)


def like_pattern(glob: str) -> str:
    escaped = like_literal(glob)
    return escaped.replace("*", "%").replace("?", "_")


def _is_glob(value: str) -> bool:
    return "*" in value or "?" in value


def _match(column: str, patterns: str | list[str]) -> Sql:
    values = [patterns] if isinstance(patterns, str) else list(patterns)
    exact = [v for v in values if not _is_glob(v)]
    parts: list[str] = []
    params: list[Any] = []
    if len(exact) == 1:
        parts.append(f"{column} = ?")
        params.append(exact[0])
    elif exact:
        parts.append(f"{column} IN ({', '.join('?' for _ in exact)})")
        params.extend(exact)
    for glob in (v for v in values if _is_glob(v)):
        parts.append(f"{column} LIKE ? ESCAPE '\\'")
        params.append(like_pattern(glob))
    if not parts:
        return Sql("FALSE")
    return Sql(parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")", params)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def condition_sql(session: Session, condition: Condition, column: str = "e.properties") -> Sql:
    """The predicate an event row must satisfy; every given field must match."""
    parts: list[Sql] = []
    for name, sql_column in _COLUMNS.items():
        value = getattr(condition, name)
        if value is not None:
            parts.append(_match(sql_column, value))
    for key, expected in (condition.properties or {}).items():
        expression, param = session.json_text(column, key)
        values = expected if isinstance(expected, list) else [expected]
        placeholders = ", ".join("?" for _ in values)
        parts.append(Sql(f"{expression} IN ({placeholders})", [param, *map(_text, values)]))
    if not parts:
        return Sql("TRUE")
    return Sql(" AND ".join(f"({p.text})" for p in parts), [x for p in parts for x in p.params])


def any_of(session: Session, conditions: list[Condition]) -> Sql:
    compiled = [condition_sql(session, c) for c in conditions]
    if not compiled:
        return Sql("FALSE")
    return Sql(" OR ".join(f"({c.text})" for c in compiled), [x for c in compiled for x in c.params])
