"""Persona membership as SQL: which contacts a journey's persona rules select."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from percorso.analytics.sql import RESOLVED_EVENTS, Sql, _text, condition_sql
from percorso.journey.definition import Journey, Persona, PersonaRule, duration_seconds
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
    return rule_sql(session, persona.when, as_of)


def rule_sql(
    session: Session, rule: PersonaRule, as_of: datetime | None = None, contacts: list[int] | None = None
) -> Sql:
    """``SELECT contact_id`` of the live contacts matching ``rule`` (traits and behaviour) as of
    ``as_of``; ``contacts`` narrows the question to those contacts (an automation's condition)."""
    as_of = as_of or datetime.now(UTC)
    where = ["c.merged_into IS NULL"]
    params: list[Any] = []
    narrow = ""
    narrow_params: list[Any] = []
    if contacts is not None:
        among, narrow_params = session.member("c.contact_id", contacts)
        narrow = f" AND {among}"
    for key, expected in (rule.traits or {}).items():
        expression, param = session.json_text("c.traits", key)
        values = expected if isinstance(expected, list) else [expected]
        where.append(f"{expression} IN ({', '.join('?' for _ in values)})")
        params += [param, *map(_text, values)]
    if rule.segments:
        # Members saved before a merge count as the contact they were merged into.
        where.append(
            "c.contact_id IN (SELECT coalesce(sc.merged_into, sc.contact_id) FROM segment_members sm "
            f"JOIN contacts sc ON sc.contact_id = sm.contact_id WHERE sm.segment_key IN ({', '.join('?' for _ in rule.segments)}))"
        )
        params += list(rule.segments)
    if rule.stage is not None:
        stages = rule.stage.stage if isinstance(rule.stage.stage, list) else [rule.stage.stage]
        # The entry open at `as_of` (left_at is the next entry's entered_at) is the current stage.
        where.append(
            "c.contact_id IN (SELECT se.contact_id FROM stage_entries se WHERE se.journey_key = ? "
            f"AND se.stage IN ({', '.join('?' for _ in stages)}) AND se.entered_at <= ? "
            "AND (se.left_at IS NULL OR se.left_at > ?))"
        )
        params += [rule.stage.journey, *stages, as_of, as_of]
    behaviour = rule.behaviour
    if not behaviour:
        return Sql(
            f"SELECT c.contact_id FROM contacts c WHERE {' AND '.join(where)}{narrow}", params + narrow_params
        )
    counts = []
    count_params: list[Any] = []
    for j, rule_part in enumerate(behaviour):
        cond = condition_sql(session, rule_part.did)
        window = ""
        if rule_part.within:
            window = " AND e.timestamp >= ?"
            cond.params.append(
                datetime.fromtimestamp(as_of.timestamp() - duration_seconds(rule_part.within), UTC)
            )
        counts.append(f"sum(CASE WHEN ({cond.text}){window} AND e.timestamp <= ? THEN 1 ELSE 0 END) AS b{j}")
        count_params += [*cond.params, as_of]
        where.append(f"coalesce(beh.b{j}, 0) >= ?")
        params.append(rule_part.at_least)
        if rule_part.at_most is not None:
            where.append(f"coalesce(beh.b{j}, 0) <= ?")
            params.append(rule_part.at_most)
    inner_where = ""
    inner_params: list[Any] = []
    if contacts is not None:
        among, inner_params = session.member("i.contact_id", contacts)
        inner_where = f" WHERE {among}"
    return Sql(
        f"SELECT c.contact_id FROM contacts c LEFT JOIN (SELECT i.contact_id AS cid, {', '.join(counts)} "
        f"FROM {RESOLVED_EVENTS}{inner_where} GROUP BY i.contact_id) beh ON beh.cid = c.contact_id "
        f"WHERE {' AND '.join(where)}{narrow}",
        [*count_params, *inner_params, *params, *narrow_params],
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
