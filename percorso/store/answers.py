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

ANSWERED = "Survey Answered"


def copy_answers(s: Session, message_ids: Sequence[str] | None = None) -> None:
    """Copies the ``Survey Answered`` events among ``message_ids`` (None: all stored) into
    ``survey_answers``. ``score`` is kept only where the event gives a number."""
    survey, survey_param = s.json_text("e.properties", "survey")
    kind, kind_param = s.json_text("e.properties", "kind")
    score, score_params = s.json_number("e.properties", "score")
    where = "e.type = 'track' AND e.event = ?"
    where_params: list[object] = [ANSWERED]
    if message_ids is not None:
        among, among_params = s.member("e.message_id", list(message_ids))
        where += f" AND {among}"
        where_params += among_params
    s.execute(
        "INSERT INTO survey_answers (message_id, identity_id, timestamp, survey, kind, score) "
        f"SELECT e.message_id, e.identity_id, e.timestamp, {survey}, {kind}, {score} FROM events e WHERE {where}",
        [survey_param, kind_param, *score_params, *where_params],
    )
