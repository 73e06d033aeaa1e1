"""Who a survey is for, beyond the page: the visitor's current stage or persona in a journey and
the saved segments they belong to. Checked against the store when a survey is saved (every name
must exist) and by the server each time percorso.js asks which surveys a visitor may see (the
browser never sees the rules' answers for anyone else)."""

from __future__ import annotations

from difflib import get_close_matches

from percorso.analytics.personas import rule_sql
from percorso.analytics.stages import StageError, get_journey
from percorso.feedback.definition import Survey
from percorso.journey.definition import InStage, Journey, JourneyError, PersonaRule, Problem
from percorso.store import Store
from percorso.store.base import Session


def audience_problems(store: Store, survey: Survey, source: str = "<survey>") -> list[Problem]:
    """The audience's journey, stages, personas and segments that the store does not hold."""
    target = survey.target
    problems: list[Problem] = []

    def unknown(field: str, i: int, name: str, kind: str, known: list[str], where: str) -> None:
        guess = get_close_matches(name, known, n=1)
        problems.append(
            Problem(
                source,
                None,
                f"target.{field}[{i}]",
                f"{name!r} is not a {kind} of {where} ({', '.join(known) or 'none defined'})",
                guess[0] if guess else None,
            )
        )

    if target.journey is not None:
        try:
            journey = get_journey(store, target.journey)
        except (StageError, JourneyError):
            problems.append(
                Problem(
                    source,
                    None,
                    "target.journey",
                    f"no journey {target.journey!r} is stored: apply it first (percorso journey apply FILE)",
                )
            )
        else:
            if journey.subject == "account":
                problems.append(
                    Problem(
                        source,
                        None,
                        "target.journey",
                        f"journey {journey.key} follows accounts, and a survey is shown to a person: "
                        "name a journey that follows contacts",
                    )
                )
            else:
                stages = journey.stage_keys()
                personas = [p.key for p in journey.personas]
                for i, key in enumerate(target.stages):
                    if key not in stages:
                        unknown("stages", i, key, "stage", stages, f"journey {journey.key}")
                for i, key in enumerate(target.personas):
                    if key not in personas:
                        unknown("personas", i, key, "persona", personas, f"journey {journey.key}")
    if target.segments:
        with store.session() as s:
            saved = [r[0] for r in s.rows("SELECT segment_key FROM segments ORDER BY segment_key")]
        for i, key in enumerate(target.segments):
            if key not in saved:
                unknown("segments", i, key, "saved segment", saved, "this project")
    return problems


def in_audience(s: Session, survey: Survey, journey: Journey | None, contact_id: int | None) -> bool:
    """Whether the live contact is in the survey's audience now (no audience: everyone; an
    unknown visitor with no contact yet is in no stage, persona or segment)."""
    target = survey.target
    if not target.has_audience():
        return True
    if contact_id is None or ((target.stages or target.personas) and journey is None):
        return False
    rule = PersonaRule(
        segments=list(target.segments),
        stage=InStage(journey=journey.key, stage=list(target.stages)) if journey and target.stages else None,
    )
    if rule.segments or rule.stage is not None:
        sql = rule_sql(s, rule, contacts=[contact_id])
        if not s.rows(sql.text, sql.params):
            return False
    if target.personas and journey is not None:
        for persona in journey.personas:
            if persona.key in target.personas:
                sql = rule_sql(s, persona.when, contacts=[contact_id])
                if s.rows(sql.text, sql.params):
                    return True
        return False
    return True
