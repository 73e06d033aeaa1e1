"""Survey answers in typed columns.

A survey answer is a ``Survey Answered`` track event (docs/surveys.md), stored like any other —
on the timeline, in exports, erased with the contact — and, in the same transaction, its survey,
kind and score are copied into ``survey_answers``, so a survey's score over a million answers
aggregates typed columns (found by an index on the survey) instead of parsing every answer's JSON
on every page view. The copy is made inside the engine, from the stored events, reading the
fields as the results used to read them at query time.
"""

from __future__ import annotations

from collections.abc import Sequence

from percorso.store.base import Session
from percorso.store.typed import copy_events

ANSWERED = "Survey Answered"


def copy_answers(s: Session, message_ids: Sequence[str] | None = None) -> None:
    """Copies the ``Survey Answered`` events among ``message_ids`` (None: all stored) into
    ``survey_answers``. ``score`` is kept only where the event gives a number."""
    survey, survey_param = s.json_text("e.properties", "survey")
    kind, kind_param = s.json_text("e.properties", "kind")
    score, score_params = s.json_number("e.properties", "score")
    copy_events(
        s,
        "survey_answers",
        ANSWERED,
        "message_id, identity_id, timestamp, survey, kind, score",
        f"{survey} AS survey, {kind} AS kind, {score} AS score",
        [survey_param, kind_param, *score_params],
        message_ids,
    )
