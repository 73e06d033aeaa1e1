"""Persona membership as SQL: which contacts a journey's persona rules select."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from percorso.analytics.sql import RESOLVED_EVENTS, Sql, _text, condition_sql
from percorso.journey.definition import Journey, Persona, duration_seconds
from percorso.store import Store
from percorso.store.base import Session


class PersonaError(ValueError):
    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


def find_persona(journey: Journey, key: str) -> Persona:
    for persona in journey.personas:
        if persona.key == key:
            return persona
    known = ", ".join(p.key for p in journey.personas) or "none defined"
    raise PersonaError("persona", f"{key!r} is not a persona of {journey.key} ({known})")


def persona_sql(session: Session, persona: Persona, as_of: datetime | None = None) -> Sql:
    """``SELECT contact_id`` of the live contacts the persona's rules select (as of ``as_of``)."""
    as_of = as_of or datetime.now(UTC)
    where = ["c.merged_into IS NULL"]
    params: list[Any] = []
    for key, expected in (persona.when.traits or {}).items():
        expression, param = session.json_text("c.traits", key)
        values = expected if isinstance(expected, list) else [expected]
        where.append(f"{expression} IN ({', '.join('?' for _ in values)})")
        params += [param, *map(_text, values)]
    behaviour = persona.when.behaviour
    if not behaviour:
        return Sql(f"SELECT c.contact_id FROM contacts c WHERE {' AND '.join(where)}", params)
    counts = []
    count_params: list[Any] = []
    for j, rule in enumerate(behaviour):
        cond = condition_sql(session, rule.did)
        window = ""
        if rule.within:
            window = " AND e.timestamp >= ?"
            cond.params.append(datetime.fromtimestamp(as_of.timestamp() - duration_seconds(rule.within), UTC))
        counts.append(f"sum(CASE WHEN ({cond.text}){window} AND e.timestamp <= ? THEN 1 ELSE 0 END) AS b{j}")
        count_params += [*cond.params, as_of]
        where.append(f"coalesce(beh.b{j}, 0) >= ?")
        params.append(rule.at_least)
        if rule.at_most is not None:
            where.append(f"coalesce(beh.b{j}, 0) <= ?")
            params.append(rule.at_most)
    return Sql(
        f"SELECT c.contact_id FROM contacts c LEFT JOIN (SELECT i.contact_id AS cid, {', '.join(counts)} "
        f"FROM {RESOLVED_EVENTS} GROUP BY i.contact_id) beh ON beh.cid = c.contact_id WHERE {' AND '.join(where)}",
        [*count_params, *params],
    )


def persona_sizes(store: Store, journey: Journey, as_of: datetime | None = None) -> list[dict[str, Any]]:
    """How many contacts each persona holds (a contact can match several)."""
    out = []
    with store.session() as s:
        s.tune_for_analytics()
        for persona in journey.personas:
            sql = persona_sql(s, persona, as_of)
            n = s.rows(f"SELECT count(*) FROM ({sql.text}) p", sql.params)[0][0]
            out.append({"persona": persona.key, "contacts": int(n)})
    return out
