"""Contacts: search, profile, timeline, export and erasure — identity resolved at query time."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from percorso.events import EVENT_COLUMNS, event_to_json, iso_utc, normalise_email
from percorso.identity import EMAIL, KINDS, USER_ID
from percorso.store.base import Session, Store, like_literal
from percorso.values import read_json

_TRAIT_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\- ]{0,63}$")


class ContactNotFound(LookupError):
    pass


class BadQuery(ValueError):
    """A search parameter percorso cannot use; ``field`` names it."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class ContactQuery:
    email: str | None = None
    q: str | None = None
    traits: tuple[tuple[str, str], ...] = ()
    channel: str | None = None
    first_seen_after: datetime | None = None
    first_seen_before: datetime | None = None
    last_seen_after: datetime | None = None
    last_seen_before: datetime | None = None
    known: bool | None = None
    limit: int = 50
    cursor: str | None = None


#: Traits a search by name reads (Segment's reserved traits, in both spellings), and the phone.
NAME_TRAITS = ("name", "firstName", "lastName", "first_name", "last_name", "phone", "company")


def _json_text(s: Session, column: str) -> str:
    """SQL reading one top-level key of a JSON column as text; takes the key as a parameter."""
    if s.json_type == "JSONB":
        return f"({column} ->> ?)"
    return f"json_extract_string({column}, ?)"


def _json_key(s: Session, key: str) -> str:
    return key if s.json_type == "JSONB" else '$."' + key + '"'


def encode_cursor(*parts: Any) -> str:
    text = "|".join(p.isoformat() if isinstance(p, datetime) else str(p) for p in parts)
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


_MAX_ID = 2**63 - 1


def decode_cursor(cursor: str, count: int) -> list[str]:
    """The parts of a cursor :func:`encode_cursor` made; the first is a time. Anything else
    raises :class:`BadQuery` naming the cursor."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        parts = text.split("|", count - 1)
        if len(parts) != count:
            raise ValueError
        datetime.fromisoformat(parts[0])
        return parts
    except (ValueError, UnicodeDecodeError):  # binascii.Error is a ValueError
        raise BadQuery("cursor", "is not a cursor this API returned") from None


def cursor_time(text: str) -> datetime:
    """A cursor's time, in UTC when it carries no offset."""
    stamp = datetime.fromisoformat(text)
    try:
        return stamp.astimezone(UTC) if stamp.tzinfo else stamp.replace(tzinfo=UTC)
    except OverflowError:  # an offset that takes the time outside the years 1 to 9999
        raise BadQuery("cursor", "is not a cursor this API returned") from None


def cursor_id(text: str) -> int:
    """A cursor's contact id; a cursor this API did not return raises :class:`BadQuery`."""
    if not text.isascii() or not text.isdigit() or int(text) > _MAX_ID:
        raise BadQuery("cursor", "is not a cursor this API returned")
    return int(text)


def decoded_traits(value: Any) -> dict[str, Any]:
    """A contact's traits column as a dict (JSON text on DuckDB, a JSONB value on PostgreSQL)."""
    if isinstance(value, str):
        decoded = read_json(value)
        return decoded if isinstance(decoded, dict) else {}
    return value or {}


def search_contacts(store: Store, query: ContactQuery) -> dict[str, Any]:
    """Live contacts matching every filter, most recently seen first, with a cursor for the next page."""
    if not 1 <= query.limit <= 1000:
        raise BadQuery("limit", "must be between 1 and 1000")
    where = ["c.merged_into IS NULL"]
    params: list[Any] = []
    with store.session() as s:
        if query.email is not None:
            email = normalise_email(query.email)
            if email is None:
                raise BadQuery("email", f"{query.email!r} is not an email address")
            where.append("c.contact_id IN (SELECT contact_id FROM identities WHERE kind = ? AND value = ?)")
            params += [EMAIL, email]
        if query.q:
            # An identifier holding the text, the contact's id, or a name (or phone) holding every
            # word typed, in any order ("Giulia Colombo", "colombo g"). A substring, literally: %
            # and _ in what the user typed are not wildcards.
            fields = ", ".join(f"{_json_text(s, 'c.traits')}" for _ in NAME_TRAITS)
            named = f"lower(concat_ws(' ', {fields}))"
            words = query.q.lower().split()[:8]
            where.append(
                "(c.contact_id IN (SELECT contact_id FROM identities WHERE lower(value) LIKE ? ESCAPE '\\') "
                "OR CAST(c.contact_id AS TEXT) = ?"
                + (
                    " OR (" + " AND ".join(f"{named} LIKE ? ESCAPE '\\'" for _ in words) + ")"
                    if words
                    else ""
                )
                + ")"
            )
            params += [f"%{like_literal(query.q.lower())}%", query.q]
            for word in words:
                params += [*(_json_key(s, k) for k in NAME_TRAITS), f"%{like_literal(word)}%"]
        for key, value in query.traits:
            if not _TRAIT_KEY.match(key):
                raise BadQuery(f"trait.{key}", "trait names are letters, digits, '_', '-', '.' and spaces")
            where.append(f"{_json_text(s, 'c.traits')} = ?")
            params += [_json_key(s, key), value]
        if query.channel:
            where.append(
                "c.contact_id IN (SELECT i.contact_id FROM events e JOIN identities i "
                "ON i.identity_id = e.identity_id WHERE e.channel = ?)"
            )
            params.append(query.channel)
        bounds: tuple[tuple[str, str, datetime | None], ...] = (
            ("st.first_seen", ">=", query.first_seen_after),
            ("st.first_seen", "<", query.first_seen_before),
            ("st.last_seen", ">=", query.last_seen_after),
            ("st.last_seen", "<", query.last_seen_before),
        )
        for column, op, bound in bounds:
            if bound is not None:
                where.append(f"{column} {op} ?")
                params.append(bound)
        if query.known is not None:
            known = "c.contact_id IN (SELECT contact_id FROM identities WHERE kind IN (?, ?))"
            where.append(known if query.known else f"NOT {known}")
            params += [USER_ID, EMAIL]
        if query.cursor:
            last_seen, contact_id = decode_cursor(query.cursor, 2)
            where.append("(st.last_seen < ? OR (st.last_seen = ? AND c.contact_id < ?))")
            stamp = cursor_time(last_seen)
            params += [stamp, stamp, cursor_id(contact_id)]
        sql = f"""
            WITH st AS (
                SELECT i.contact_id, min(e.timestamp) AS first_seen, max(e.timestamp) AS last_seen,
                       count(*) AS events
                FROM events e JOIN identities i ON i.identity_id = e.identity_id
                GROUP BY i.contact_id
            )
            SELECT c.contact_id, c.traits, c.consent, st.first_seen, st.last_seen, st.events,
                   (SELECT min(value) FROM identities x WHERE x.contact_id = c.contact_id AND x.kind = ?) AS email,
                   (SELECT min(value) FROM identities x WHERE x.contact_id = c.contact_id AND x.kind = ?) AS user_id
            FROM contacts c JOIN st ON st.contact_id = c.contact_id
            WHERE {" AND ".join(where)}
            ORDER BY st.last_seen DESC, c.contact_id DESC
            LIMIT ?
        """
        rows = s.dicts(sql, [EMAIL, USER_ID, *params, query.limit + 1])
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    contacts = [
        {
            "id": int(r["contact_id"]),
            "email": r["email"],
            "userId": r["user_id"],
            "traits": decoded_traits(r["traits"]),
            "consent": r["consent"],
            "firstSeen": iso_utc(r["first_seen"]),
            "lastSeen": iso_utc(r["last_seen"]),
            "events": int(r["events"]),
        }
        for r in rows
    ]
    next_cursor = encode_cursor(rows[-1]["last_seen"], rows[-1]["contact_id"]) if more and rows else None
    return {"contacts": contacts, "next_cursor": next_cursor}


def resolve_contact(s: Session, contact_id: int) -> tuple[int, dict[str, Any]]:
    """The live contact for an id, following merges (a merged id answers with its survivor)."""
    rows = s.dicts(
        "SELECT contact_id, created_at, merged_into, traits, traits_updated_at, consent, consent_updated_at "
        "FROM contacts WHERE contact_id = ?",
        [contact_id],
    )
    if not rows:
        raise ContactNotFound(contact_id)
    row = rows[0]
    if row["merged_into"] is not None:
        return resolve_contact(s, int(row["merged_into"]))
    return int(row["contact_id"]), row


def find_contact(store: Store, kind: str, value: str) -> int:
    """The contact an identifier belongs to."""
    if kind not in KINDS:
        raise BadQuery("kind", f"must be one of {', '.join(KINDS)}")
    if kind == EMAIL:
        value = normalise_email(value) or value
    with store.session() as s:
        rows = s.rows("SELECT contact_id FROM identities WHERE kind = ? AND value = ?", [kind, value])
    if not rows:
        raise ContactNotFound(f"{kind}={value}")
    return int(rows[0][0])


def contact_profile(store: Store, contact_id: int) -> dict[str, Any]:
    """Merged traits, identifiers, first/last seen and counts by channel for one contact."""
    with store.session() as s:
        live_id, row = resolve_contact(s, contact_id)
        # An identifier was first seen on the first event that carried it (events keep the
        # identifiers they arrived with), not when it was stored: imports store old history late.
        identities = s.dicts(
            "SELECT i.kind, i.value, i.created_at, (SELECT min(e.timestamp) FROM events e WHERE e.identity_id IN "
            "(SELECT identity_id FROM identities WHERE contact_id = ?) AND ((i.kind = 'anonymous_id' AND "
            "e.anonymous_id = i.value) OR (i.kind = 'user_id' AND e.user_id = i.value) OR (i.kind = 'email' AND "
            "lower(e.email) = i.value))) AS first_event FROM identities i WHERE i.contact_id = ? ORDER BY i.identity_id",
            [live_id, live_id],
        )
        channels = s.rows(
            "SELECT e.channel, count(*), min(e.timestamp), max(e.timestamp) FROM events e "
            "WHERE e.identity_id IN (SELECT identity_id FROM identities WHERE contact_id = ?) "
            "GROUP BY e.channel ORDER BY count(*) DESC, e.channel",
            [live_id],
        )
        merged = s.rows(
            "SELECT contact_id FROM contacts WHERE merged_into = ? ORDER BY contact_id", [live_id]
        )
        unsubscribed = s.rows(
            "SELECT channel, min(unsubscribed_at), min(source) FROM unsubscribes "
            "WHERE contact_id = ? OR contact_id IN (SELECT contact_id FROM contacts WHERE merged_into = ?) "
            "GROUP BY channel ORDER BY channel",
            [live_id, live_id],
        )
    firsts = [r[2] for r in channels]
    lasts = [r[3] for r in channels]
    return {
        "id": live_id,
        "requestedId": contact_id,
        "createdAt": iso_utc(row["created_at"]),
        "traits": decoded_traits(row["traits"]),
        "consent": row["consent"],
        "consentUpdatedAt": iso_utc(row["consent_updated_at"]),
        # Channels the contact left (an email's unsubscribe link): marketing there stops.
        "unsubscribed": [{"channel": r[0], "at": iso_utc(r[1]), "source": r[2]} for r in unsubscribed],
        "identifiers": [
            {
                "kind": i["kind"],
                "value": i["value"],
                "firstSeen": iso_utc(i["first_event"] or i["created_at"]),
                "storedAt": iso_utc(i["created_at"]),
            }
            for i in identities
        ],
        "mergedContacts": [int(r[0]) for r in merged],
        "firstSeen": iso_utc(min(firsts)) if firsts else None,
        "lastSeen": iso_utc(max(lasts)) if lasts else None,
        "events": sum(int(r[1]) for r in channels),
        "channels": {r[0]: int(r[1]) for r in channels},
    }


def contact_timeline(
    store: Store, contact_id: int, *, limit: int = 50, cursor: str | None = None, channel: str | None = None
) -> dict[str, Any]:
    """The contact's touchpoints, newest first, across every identifier they have used."""
    if not 1 <= limit <= 1000:
        raise BadQuery("limit", "must be between 1 and 1000")
    where = ["e.identity_id IN (SELECT identity_id FROM identities WHERE contact_id = ?)"]
    with store.session() as s:
        live_id, _ = resolve_contact(s, contact_id)
        params: list[Any] = [live_id]
        if channel:
            where.append("e.channel = ?")
            params.append(channel)
        if cursor:
            stamp_text, message_id = decode_cursor(cursor, 2)
            stamp = cursor_time(stamp_text)
            where.append("(e.timestamp < ? OR (e.timestamp = ? AND e.message_id < ?))")
            params += [stamp, stamp, message_id]
        rows = s.dicts(
            f"SELECT {', '.join('e.' + c for c in EVENT_COLUMNS)} FROM events e WHERE {' AND '.join(where)} "
            "ORDER BY e.timestamp DESC, e.message_id DESC LIMIT ?",
            [*params, limit + 1],
        )
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(rows[-1]["timestamp"], rows[-1]["message_id"]) if more and rows else None
    return {"contact": live_id, "events": [event_to_json(r) for r in rows], "next_cursor": next_cursor}


def export_contact(store: Store, contact_id: int) -> dict[str, Any]:
    """Everything percorso holds on a contact, for a data-subject access request."""
    profile = contact_profile(store, contact_id)
    live_id = profile["id"]
    with store.session() as s:
        rows = s.dicts(
            f"SELECT {', '.join('e.' + c for c in EVENT_COLUMNS)} FROM events e "
            "WHERE e.identity_id IN (SELECT identity_id FROM identities WHERE contact_id = ?) "
            "ORDER BY e.timestamp, e.message_id",
            [live_id],
        )
        conflicts = s.dicts(
            "SELECT detected_at, kind, value, reason FROM identity_conflicts "
            "WHERE contact_id = ? OR other_contact_id = ? ORDER BY detected_at",
            [live_id, live_id],
        )
    events = []
    for r in rows:
        item = event_to_json(r)
        for key in ("integrations",):
            if r.get(key) and r[key] != "{}":
                item[key] = decoded_traits(r[key])
        for key in (
            "ip",
            "user_agent",
            "locale",
            "page_url",
            "page_referrer",
            "utm_source",
            "utm_medium",
            "utm_campaign",
            "email",
        ):
            if r.get(key) is not None:
                item.setdefault("stored", {})[key] = r[key]
        events.append(item)
    return {
        "exportedAt": iso_utc(datetime.now(UTC)),
        "contact": profile,
        "events": events,
        "identityConflicts": [{**c, "detected_at": iso_utc(c["detected_at"])} for c in conflicts],
    }


#: Every table an erasure deletes rows from.
ERASED_FROM = (
    "stage_progress",
    "account_stage_entries",
    "heatmap_clicks",
    "survey_answers",
    "events",
    "identity_conflicts",
    "stage_entries",
    "enrollment_log",
    "outbox",
    "onsite_messages",
    "unsubscribes",
    "enrollments",
    "segment_members",
    "trigger_occurrences",
    "identities",
    "contacts",
)


def erase_contact(store: Store, contact_id: int) -> dict[str, Any]:
    """Deletes a contact's events, identifiers, traits and merged profiles; keeps a count-only record."""
    now = datetime.now(UTC)
    with store.writing() as s:
        s.lock_identity_graph()
        live_id, _ = resolve_contact(s, contact_id)
        identities = s.rows("SELECT identity_id FROM identities WHERE contact_id = ?", [live_id])
        events = s.rows(
            "SELECT count(*) FROM events WHERE identity_id IN (SELECT identity_id FROM identities WHERE contact_id = ?)",
            [live_id],
        )[0][0]
        # Accounts' stage history may rest on this person's events: drop those entries and have
        # the next update rebuild those journeys from the events that remain.
        mine = "SELECT message_id FROM events WHERE identity_id IN (SELECT identity_id FROM identities WHERE contact_id = ?)"
        s.execute(
            "DELETE FROM stage_progress WHERE journey_key IN "
            f"(SELECT DISTINCT journey_key FROM account_stage_entries WHERE message_id IN ({mine}))",
            [live_id],
        )
        s.execute(f"DELETE FROM account_stage_entries WHERE message_id IN ({mine})", [live_id])
        for table in ("heatmap_clicks", "survey_answers", "events"):
            s.execute(
                f"DELETE FROM {table} WHERE identity_id IN (SELECT identity_id FROM identities WHERE contact_id = ?)",
                [live_id],
            )
        # Every id the person had: a conflict recorded before a merge names the merged id.
        every = "(SELECT contact_id FROM contacts WHERE contact_id = ? OR merged_into = ?)"
        s.execute(
            f"DELETE FROM identity_conflicts WHERE contact_id IN {every} OR other_contact_id IN {every}",
            [live_id, live_id, live_id, live_id],
        )
        s.execute(
            "DELETE FROM stage_entries WHERE contact_id = ? OR contact_id IN "
            "(SELECT contact_id FROM contacts WHERE merged_into = ?)",
            [live_id, live_id],
        )
        # Automations: their state, history, queued messages and unsubscribes name the contact too.
        for table in (
            "enrollment_log",
            "outbox",
            "onsite_messages",
            "unsubscribes",
            "enrollments",
            "segment_members",
            "trigger_occurrences",
        ):
            s.execute(f"DELETE FROM {table} WHERE contact_id IN {every}", [live_id, live_id])
        s.execute("DELETE FROM identities WHERE contact_id = ?", [live_id])
        s.execute("DELETE FROM contacts WHERE contact_id = ? OR merged_into = ?", [live_id, live_id])
        s.execute(
            "INSERT INTO erasures (erased_at, contact_id, identities, events) VALUES (?, ?, ?, ?)",
            [now, live_id, len(identities), int(events)],
        )
    store.after_erasure(ERASED_FROM)
    return {"erased": live_id, "identities": len(identities), "events": int(events), "erasedAt": iso_utc(now)}


def set_consent(store: Store, contact_id: int, consent: str) -> dict[str, Any]:
    if consent not in ("granted", "denied"):
        raise BadQuery("consent", "must be 'granted' or 'denied'")
    now = datetime.now(UTC)
    with store.writing() as s:
        live_id, _ = resolve_contact(s, contact_id)
        s.execute(
            "UPDATE contacts SET consent = ?, consent_updated_at = ? WHERE contact_id = ?",
            [consent, now, live_id],
        )
    return {"id": live_id, "consent": consent, "consentUpdatedAt": iso_utc(now)}
