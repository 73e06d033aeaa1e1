"""The filters every analytics page shares: journey, persona, period, channel, saved segment."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from fastapi import Request

from percorso.analytics.journeymap import people_of
from percorso.analytics.period import DEFAULT_DAYS
from percorso.analytics.personas import find_persona, journey_persona_sql
from percorso.analytics.sql import Sql
from percorso.analytics.stages import StageError, get_journey
from percorso.journey.definition import Journey
from percorso.store import Store


class PageError(Exception):
    """A request a person can fix: shown on the page (and as 400 JSON at the twin), never a traceback."""

    def __init__(self, message: str, field: str | None = None, status: int = 400, key: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.status = status
        self.key = key


def parse_day(value: str | None, field: str) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise PageError(f"{field}: {value!r} is not a date; write it as YYYY-MM-DD", field) from None


@dataclass(frozen=True)
class Period:
    first: date
    last: date

    @property
    def start(self) -> datetime:
        return datetime.combine(self.first, time(), UTC)

    @property
    def end(self) -> datetime:
        return datetime.combine(self.last + timedelta(days=1), time(), UTC)

    def as_dict(self) -> dict[str, str]:
        return {"from": self.first.isoformat(), "to": self.last.isoformat()}


def period(request: Request, prefix: str = "") -> Period:
    """``from``/``to`` (inclusive days, UTC); by default the last 26 weeks up to today."""
    last = parse_day(request.query_params.get(prefix + "to"), prefix + "to") or datetime.now(UTC).date()
    first = parse_day(request.query_params.get(prefix + "from"), prefix + "from") or last - timedelta(
        days=DEFAULT_DAYS
    )
    if first > last:
        raise PageError(f"the period starts ({first}) after it ends ({last})", prefix + "from")
    return Period(first, last)


@dataclass(frozen=True)
class Filters:
    journey: Journey
    journeys: list[Journey]
    persona: str | None
    period: Period
    channel: str | None
    segment: str | None
    refresh: bool

    def key(self) -> tuple[Any, ...]:
        return (self.journey.key, self.persona, self.period, self.channel, self.segment)

    def as_dict(self) -> dict[str, Any]:
        return {
            "journey": self.journey.key,
            "persona": self.persona,
            **self.period.as_dict(),
            "channel": self.channel,
            "segment": self.segment,
        }


_PARSED: dict[tuple[str, Any], Journey] = {}


def stored_journeys(store: Store) -> list[Journey]:
    """Every stored journey, parsed once per version (parsing and validating YAML takes tens of ms)."""
    with store.session() as s:
        rows = s.rows("SELECT journey_key, updated_at FROM journeys ORDER BY created_at")
    out = []
    for key, updated_at in rows:
        parsed = _PARSED.get((key, updated_at))
        if parsed is None:
            try:
                parsed = get_journey(store, key)
            except StageError:
                continue  # deleted between the two queries
            if len(_PARSED) > 64:
                _PARSED.clear()
            _PARSED[(key, updated_at)] = parsed
        out.append(parsed)
    return out


def journey_filters(request: Request) -> Filters:
    store: Store = request.app.state.store
    journeys = stored_journeys(store)
    if not journeys:
        raise PageError("no journey is defined yet", "journey", status=404, key="empty.no_journey")
    wanted = request.query_params.get("journey") or None
    journey = journeys[0] if wanted is None else next((j for j in journeys if j.key == wanted), None)
    if journey is None:
        known = ", ".join(j.key for j in journeys)
        raise PageError(f"there is no journey {wanted!r} (journeys: {known})", "journey", status=404)
    persona = request.query_params.get("persona") or None
    if persona and persona not in {p.key for p in journey.personas}:
        known = ", ".join(p.key for p in journey.personas) or "none"
        raise PageError(f"the journey has no persona {persona!r} (personas: {known})", "persona")
    return Filters(
        journey=journey,
        journeys=journeys,
        persona=persona,
        period=period(request),
        channel=request.query_params.get("channel") or None,
        segment=request.query_params.get("segment") or None,
        refresh=request.query_params.get("refresh") == "1",
    )


def contact_filter(store: Store, filters: Filters) -> Sql | None:
    """The map's channel and segment filters as one ``SELECT contact_id``."""
    parts: list[Sql] = []
    if filters.channel:
        parts.append(
            Sql(
                "SELECT DISTINCT i.contact_id FROM events e JOIN identities i ON i.identity_id = e.identity_id "
                "WHERE e.channel = ? AND e.timestamp >= ? AND e.timestamp < ?",
                [filters.channel, filters.period.start, filters.period.end],
            )
        )
    if filters.segment:
        with store.session() as s:
            if not s.rows("SELECT 1 FROM segments WHERE segment_key = ?", [filters.segment]):
                raise PageError(f"there is no saved segment {filters.segment!r}", "segment")
        parts.append(
            Sql(
                "SELECT coalesce(c.merged_into, c.contact_id) FROM segment_members m "
                "JOIN contacts c ON c.contact_id = m.contact_id WHERE m.segment_key = ?",
                [filters.segment],
            )
        )
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    return Sql(
        f"SELECT contact_id FROM ({parts[0].text}) a(contact_id) WHERE contact_id IN ({parts[1].text})",
        [*parts[0].params, *parts[1].params],
    )


def people(store: Store, filters: Filters) -> Sql | None:
    """The page's persona, channel and saved-segment filters as one ``SELECT`` of contact ids:
    the people whose pain points the map shows (a journey that follows accounts gives the
    people of the chosen accounts)."""
    only = contact_filter(store, filters)
    if not filters.persona:
        return only
    journey = filters.journey
    with store.session() as s:
        chosen = journey_persona_sql(s, journey, find_persona(journey, filters.persona), filters.period.end)
    members = people_of(journey, chosen) or chosen
    if only is None:
        return members
    return Sql(
        f"SELECT contact_id FROM ({members.text}) pm(contact_id) WHERE contact_id IN ({only.text})",
        [*members.params, *only.params],
    )
