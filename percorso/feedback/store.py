"""Saving and reading survey definitions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from percorso.feedback.definition import Survey, SurveyError, survey_from_data
from percorso.store import Store
from percorso.values import read_json


class SurveyNotFound(LookupError):
    def __init__(self, key: str):
        self.key = key
        super().__init__(f"there is no survey {key!r}")


def save_survey(
    store: Store, survey: Survey, source: str, *, now: datetime | None = None, document: str | None = None
) -> dict[str, Any]:
    """Stores the survey; a changed definition becomes a new version, the same one changes nothing.

    ``document`` is the text as written (YAML with its comments), shown again in the dashboard's
    editor; a document that differs only in comments or layout replaces the stored text without
    a new version (``changed`` false, ``document_changed`` true)."""
    from percorso.feedback.audience import audience_problems

    problems = audience_problems(store, survey, source)
    if problems:
        raise SurveyError(problems)
    now = now or datetime.now(UTC)
    encoded = msgspec.json.encode(survey).decode()
    with store.writing() as s:
        s.lock_named("surveys")
        rows = s.rows(
            "SELECT version, status, CAST(definition AS TEXT), document FROM surveys WHERE survey_key = ?",
            [survey.key],
        )
        if rows:
            version, status, stored, kept = int(rows[0][0]), str(rows[0][1]), rows[0][2], rows[0][3]
            if read_json(stored) == msgspec.to_builtins(survey):
                rewritten = document is not None and document != kept
                if rewritten:
                    s.execute("UPDATE surveys SET document = ? WHERE survey_key = ?", [document, survey.key])
                return {
                    "key": survey.key,
                    "version": version,
                    "status": status,
                    "changed": False,
                    "document_changed": rewritten,
                }
            version += 1
            s.execute(
                f"UPDATE surveys SET version = ?, definition = CAST(? AS {s.json_type}), source = ?, updated_at = ?, "
                "document = ? WHERE survey_key = ?",
                [version, encoded, source, now, document, survey.key],
            )
        else:
            version, status = 1, "active"
            s.execute(
                "INSERT INTO surveys (survey_key, version, status, definition, source, created_at, updated_at, "
                f"document) VALUES (?, ?, ?, CAST(? AS {s.json_type}), ?, ?, ?, ?)",
                [survey.key, version, status, encoded, source, now, now, document],
            )
    return {
        "key": survey.key,
        "version": version,
        "status": status,
        "changed": True,
        "document_changed": True,
    }


def survey_document(store: Store, key: str) -> str | None:
    """The survey's current document as it was written, when it was stored with one."""
    with store.session() as s:
        rows = s.rows("SELECT document FROM surveys WHERE survey_key = ?", [key])
    if not rows:
        raise SurveyNotFound(key)
    return str(rows[0][0]) if rows[0][0] is not None else None


def set_survey_status(store: Store, key: str, status: str, *, now: datetime | None = None) -> dict[str, Any]:
    """Pauses (``paused``: offered to nobody; answers from a survey already open, or from an
    email link, are still kept) or resumes (``active``)."""
    if status not in ("active", "paused"):
        raise ValueError(f"status must be 'active' or 'paused', not {status!r}")
    with store.writing() as s:
        rows = s.rows("SELECT version FROM surveys WHERE survey_key = ?", [key])
        if not rows:
            raise SurveyNotFound(key)
        s.execute(
            "UPDATE surveys SET status = ?, updated_at = ? WHERE survey_key = ?",
            [status, now or datetime.now(UTC), key],
        )
    return {"key": key, "version": int(rows[0][0]), "status": status}


def get_survey(store: Store, key: str) -> tuple[Survey, int, str]:
    with store.session() as s:
        rows = s.rows(
            "SELECT CAST(definition AS TEXT), version, status FROM surveys WHERE survey_key = ?", [key]
        )
    if not rows:
        raise SurveyNotFound(key)
    return (
        survey_from_data(read_json(rows[0][0]), None, f"stored survey {key}"),
        int(rows[0][1]),
        str(rows[0][2]),
    )


def list_surveys(store: Store) -> list[dict[str, Any]]:
    with store.session() as s:
        rows = s.rows("SELECT survey_key, version, status, updated_at FROM surveys ORDER BY survey_key")
    return [{"key": r[0], "version": int(r[1]), "status": r[2], "updatedAt": r[3].isoformat()} for r in rows]


def active_surveys(store: Store) -> list[Survey]:
    with store.session() as s:
        rows = s.rows(
            "SELECT survey_key, CAST(definition AS TEXT) FROM surveys WHERE status = 'active' ORDER BY survey_key"
        )
    return [survey_from_data(read_json(text), None, f"stored survey {key}") for key, text in rows]


def visitor_contact(store: Store, anonymous_id: str) -> int | None:
    """The live contact the browser's anonymous id belongs to (None before its first event)."""
    with store.session() as s:
        rows = s.rows(
            "SELECT i.contact_id FROM identities i WHERE i.kind = 'anonymous_id' AND i.value = ?",
            [anonymous_id],
        )
    return int(rows[0][0]) if rows else None


def survey_history(
    store: Store, anonymous_id: str, keys: list[str]
) -> tuple[dict[str, dict[str, datetime]], dict[str, int]]:
    """For the visitor's contact: when each survey was last shown and answered; and each survey's
    answers from everyone (for ``stop_after``)."""
    from percorso.analytics.feedback import ANSWERED, SHOWN

    seen: dict[str, dict[str, datetime]] = {}
    totals: dict[str, int] = {}
    if not keys:
        return seen, totals
    with store.session() as s:
        survey_sql, survey_param = s.json_text("e.properties", "survey")
        among, among_params = s.member(survey_sql, keys)
        live = s.rows(
            "SELECT coalesce(c.merged_into, c.contact_id) FROM identities i JOIN contacts c ON c.contact_id = i.contact_id "
            "WHERE i.kind = 'anonymous_id' AND i.value = ?",
            [anonymous_id],
        )
        if live:
            contact = live[0][0]
            rows = s.rows(
                f"SELECT {survey_sql}, e.event, max(e.timestamp) FROM events e JOIN identities i ON i.identity_id = e.identity_id "
                "WHERE (i.contact_id = ? OR i.contact_id IN (SELECT contact_id FROM contacts WHERE merged_into = ?)) "
                f"AND e.type = 'track' AND e.event IN (?, ?) AND {among} GROUP BY 1, 2",
                [survey_param, contact, contact, SHOWN, ANSWERED, survey_param, *among_params],
            )
            for key, event, at in rows:
                seen.setdefault(key, {})[event] = at
        for key, n in s.rows(
            f"SELECT {survey_sql}, count(*) FROM events e WHERE e.type = 'track' AND e.event = ? AND {among} GROUP BY 1",
            [survey_param, ANSWERED, survey_param, *among_params],
        ):
            totals[key] = int(n)
    return seen, totals
