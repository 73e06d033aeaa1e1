"""Persona membership as SQL: which contacts a journey's persona rules select."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from percorso.analytics.sql import ACCOUNT, MEMBERSHIPS, RESOLVED_EVENTS, Sql, _text, condition_sql
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


def journey_persona_sql(
    session: Session, journey: Journey, persona: Persona, as_of: datetime | None = None
) -> Sql:
    """The persona's members in the journey's own terms: ``SELECT contact_id`` of contacts, or
    ``SELECT account_id`` of accounts in a journey that follows accounts."""
    if journey.subject == "account":
        return account_rule_sql(session, persona.when, as_of)
    return persona_sql(session, persona, as_of)


def account_rule_sql(session: Session, rule: PersonaRule, as_of: datetime | None = None) -> Sql:
    """``SELECT account_id`` of the accounts matching ``rule``: each trait is the latest value
    its ``group`` calls sent up to ``as_of`` (calls may send a few traits at a time, as in
    Segment); behaviour counts the events of all the account's people."""
    as_of = as_of or datetime.now(UTC)
    if rule.segments or rule.stage is not None:
        raise PersonaError(
            "when", "segments and stage rules select contacts; an account persona uses traits and behaviour"
        )
    joins: list[str] = []
    join_params: list[Any] = []
    where: list[str] = []
    params: list[Any] = []
    for j, (key, expected) in enumerate((rule.traits or {}).items()):
        expression, param = session.json_text("e.traits", key)
        joins.append(
            f" LEFT JOIN (SELECT group_id, v FROM (SELECT e.group_id, {expression} AS v, row_number() OVER "
            "(PARTITION BY e.group_id ORDER BY e.timestamp DESC, e.message_id DESC) AS rn FROM events e "
            f"WHERE e.type = 'group' AND e.timestamp <= ? AND {expression} IS NOT NULL) x WHERE rn = 1) t{j} "
            f"ON t{j}.group_id = a.gid"
        )
        join_params += [param, as_of, param]
        values = expected if isinstance(expected, list) else [expected]
        where.append(f"t{j}.v IN ({', '.join('?' for _ in values)})")
        params += list(map(_text, values))
    counts, count_params = _behaviour(session, rule, as_of, where, params)
    if counts:
        joins.append(
            f" LEFT JOIN (SELECT {ACCOUNT.key} AS gid, {counts} FROM {ACCOUNT.events} "
            "GROUP BY m.gid) beh ON beh.gid = a.gid"
        )
        join_params += count_params
    return Sql(
        f"SELECT a.gid AS account_id FROM (SELECT DISTINCT gid FROM ({MEMBERSHIPS}) am) a{''.join(joins)}"
        + (f" WHERE {' AND '.join(where)}" if where else ""),
        [*join_params, *params],
    )


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
    counts, count_params = _behaviour(session, rule, as_of, where, params)
    inner_where = ""
    inner_params: list[Any] = []
    if contacts is not None:
        among, inner_params = session.member("i.contact_id", contacts)
        inner_where = f" WHERE {among}"
    return Sql(
        f"SELECT c.contact_id FROM contacts c LEFT JOIN (SELECT i.contact_id AS cid, {counts} "
        f"FROM {RESOLVED_EVENTS}{inner_where} GROUP BY i.contact_id) beh ON beh.cid = c.contact_id "
        f"WHERE {' AND '.join(where)}{narrow}",
        [*count_params, *inner_params, *params, *narrow_params],
    )


def _behaviour(
    session: Session, rule: PersonaRule, as_of: datetime, where: list[str], params: list[Any]
) -> tuple[str, list[Any]]:
    """The counts ``b0, b1, …`` of the events each behaviour rule names (for a ``beh`` subquery
    over ``events e``), and its parameters; appends the tests on them to ``where`` and ``params``."""
    counts = []
    count_params: list[Any] = []
    for j, part in enumerate(rule.behaviour):
        cond = condition_sql(session, part.did)
        window = ""
        if part.within:
            window = " AND e.timestamp >= ?"
            cond.params.append(datetime.fromtimestamp(as_of.timestamp() - duration_seconds(part.within), UTC))
        counts.append(f"sum(CASE WHEN ({cond.text}){window} AND e.timestamp <= ? THEN 1 ELSE 0 END) AS b{j}")
        count_params += [*cond.params, as_of]
        where.append(f"coalesce(beh.b{j}, 0) >= ?")
        params.append(part.at_least)
        if part.at_most is not None:
            where.append(f"coalesce(beh.b{j}, 0) <= ?")
            params.append(part.at_most)
    return ", ".join(counts), count_params


def persona_sizes(store: Store, journey: Journey, as_of: datetime | None = None) -> list[dict[str, Any]]:
    """How many contacts (accounts, in a journey that follows accounts) each persona holds (one
    can match several)."""
    out = []
    with store.session() as s:
        s.tune_for_analytics()
        for persona in journey.personas:
            sql = journey_persona_sql(s, journey, persona, as_of)
            n = s.rows(f"SELECT count(*) FROM ({sql.text}) p", sql.params)[0][0]
            out.append({"persona": persona.key, "contacts": int(n)})
    return out
