"""Versioned schema migrations, written once for both engines.

Each migration is SQL with a few dialect placeholders (``{json}`` for the JSON column type, ``{bytes}`` for binary);
lines starting ``--pg`` are statements for PostgreSQL only (secondary indexes DuckDB does not
use for scans and that would only slow its updates).
Applied in order by ``percorso migrate`` and on start; applied versions are recorded in
``schema_migrations``. Never edit a released migration: add a new one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from percorso.values import SUSPECT_SQL, clean_json

if TYPE_CHECKING:
    from percorso.store.base import Session


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str
    #: Runs after ``sql`` in the same transaction, for changes SQL alone cannot make.
    repair: Callable[[Session], None] | None = None


#: The JSON columns the value domain covers (see percorso/values.py), by table and row key.
JSON_COLUMNS = (
    ("events", "message_id", ("properties", "traits", "context", "integrations")),
    ("contacts", "contact_id", ("traits",)),
)


def repair_outside_numbers(s: Session) -> None:
    """Rewrites stored numbers outside the value domain as their strings, as the collector
    now does at the door; rows stored before it read back everywhere afterwards."""
    for table, key, columns in JSON_COLUMNS:
        texts = [f"CAST({c} AS TEXT)" for c in columns]
        where = " OR ".join(s.text_matches(t) for t in texts)
        rows = s.rows(
            f"SELECT {key}, {', '.join(texts)} FROM {table} WHERE {where}", [SUSPECT_SQL] * len(texts)
        )
        for row in rows:
            for column, text in zip(columns, row[1:], strict=True):
                cleaned = clean_json(text, column) if text else None
                if cleaned is not None:
                    s.execute(
                        f"UPDATE {table} SET {column} = CAST(? AS {s.json_type}) WHERE {key} = ?",
                        [cleaned[0], row[0]],
                    )


def _copy_stored_answers(s: Session) -> None:
    from percorso.store.answers import copy_answers

    copy_answers(s)


def _copy_stored_clicks(s: Session) -> None:
    from percorso.store.clicks import copy_clicks

    copy_clicks(s)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "events, identities, contacts, api keys",
        """
        CREATE SEQUENCE contact_id_seq START 1;
        CREATE SEQUENCE identity_id_seq START 1;

        CREATE TABLE contacts (
            contact_id BIGINT PRIMARY KEY,
            created_at TIMESTAMPTZ NOT NULL,
            merged_into BIGINT,
            merged_at TIMESTAMPTZ,
            traits {json} NOT NULL,
            traits_updated_at TIMESTAMPTZ,
            consent TEXT,
            consent_updated_at TIMESTAMPTZ
        );

        CREATE TABLE identities (
            identity_id BIGINT PRIMARY KEY,
            kind TEXT NOT NULL,
            value TEXT NOT NULL,
            contact_id BIGINT NOT NULL,
            created_at TIMESTAMPTZ NOT NULL,
            UNIQUE (kind, value)
        );
        CREATE INDEX identities_contact ON identities (contact_id);

        CREATE TABLE events (
            message_id TEXT PRIMARY KEY,
            type TEXT NOT NULL,
            event TEXT,
            name TEXT,
            anonymous_id TEXT,
            user_id TEXT,
            email TEXT,
            group_id TEXT,
            previous_id TEXT,
            timestamp TIMESTAMPTZ NOT NULL,
            original_timestamp TIMESTAMPTZ,
            sent_at TIMESTAMPTZ,
            received_at TIMESTAMPTZ NOT NULL,
            channel TEXT NOT NULL,
            source_id TEXT,
            page_url TEXT,
            page_path TEXT,
            page_referrer TEXT,
            page_title TEXT,
            utm_source TEXT,
            utm_medium TEXT,
            utm_campaign TEXT,
            utm_term TEXT,
            utm_content TEXT,
            ip TEXT,
            user_agent TEXT,
            locale TEXT,
            library TEXT,
            properties {json} NOT NULL,
            traits {json} NOT NULL,
            context {json} NOT NULL,
            integrations {json} NOT NULL,
            identity_id BIGINT NOT NULL
        );
        {events_indexes}

        CREATE TABLE identity_conflicts (
            detected_at TIMESTAMPTZ NOT NULL,
            kind TEXT NOT NULL,
            value TEXT NOT NULL,
            contact_id BIGINT NOT NULL,
            other_contact_id BIGINT NOT NULL,
            reason TEXT NOT NULL
        );

        CREATE TABLE erasures (
            erased_at TIMESTAMPTZ NOT NULL,
            contact_id BIGINT NOT NULL,
            identities INTEGER NOT NULL,
            events INTEGER NOT NULL
        );

        CREATE TABLE api_keys (
            key_id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            name TEXT NOT NULL,
            key_hash TEXT NOT NULL UNIQUE,
            created_at TIMESTAMPTZ NOT NULL,
            revoked_at TIMESTAMPTZ
        );
        """,
    ),
    Migration(
        2,
        "journeys and contacts' stage history",
        """
        CREATE TABLE journeys (
            journey_key TEXT PRIMARY KEY,
            definition {json} NOT NULL,
            source TEXT NOT NULL,
            digest TEXT NOT NULL,
            created_at TIMESTAMPTZ NOT NULL,
            updated_at TIMESTAMPTZ NOT NULL
        );

        CREATE TABLE stage_entries (
            journey_key TEXT NOT NULL,
            contact_id BIGINT NOT NULL,
            seq INTEGER NOT NULL,
            stage TEXT NOT NULL,
            stage_index INTEGER NOT NULL,
            entered_at TIMESTAMPTZ NOT NULL,
            left_at TIMESTAMPTZ,
            message_id TEXT NOT NULL,
            channel TEXT,
            PRIMARY KEY (journey_key, contact_id, seq)
        );

        CREATE TABLE stage_progress (
            journey_key TEXT PRIMARY KEY,
            digest TEXT NOT NULL,
            through TIMESTAMPTZ NOT NULL,
            updated_at TIMESTAMPTZ NOT NULL
        );
        {events_received_index}
        """,
    ),
    Migration(
        3,
        "automations: versions, enrollments, their log, the outbox, on-site messages",
        """
        CREATE SEQUENCE enrollment_id_seq START 1;

        CREATE TABLE automations (
            automation_key TEXT PRIMARY KEY,
            version INTEGER NOT NULL,
            status TEXT NOT NULL,
            definition {json} NOT NULL,
            source TEXT NOT NULL,
            created_at TIMESTAMPTZ NOT NULL,
            updated_at TIMESTAMPTZ NOT NULL
        );

        CREATE TABLE automation_versions (
            automation_key TEXT NOT NULL,
            version INTEGER NOT NULL,
            digest TEXT NOT NULL,
            definition {json} NOT NULL,
            source TEXT NOT NULL,
            created_at TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (automation_key, version)
        );

        CREATE TABLE enrollments (
            enrollment_id BIGINT PRIMARY KEY,
            automation_key TEXT NOT NULL,
            version INTEGER NOT NULL,
            contact_id BIGINT NOT NULL,
            status TEXT NOT NULL,
            step TEXT,
            seq INTEGER NOT NULL,
            due_at TIMESTAMPTZ,
            waiting_since TIMESTAMPTZ,
            variant TEXT,
            entered_at TIMESTAMPTZ NOT NULL,
            exited_at TIMESTAMPTZ,
            exit_reason TEXT,
            trigger_id TEXT NOT NULL,
            entered_pos TIMESTAMPTZ NOT NULL,
            goal_at TIMESTAMPTZ,
            UNIQUE (automation_key, contact_id, trigger_id)
        );
        --pg CREATE INDEX enrollments_due ON enrollments (due_at) WHERE due_at IS NOT NULL;
        --pg CREATE INDEX enrollments_contact ON enrollments (contact_id, automation_key);

        CREATE TABLE enrollment_log (
            enrollment_id BIGINT NOT NULL,
            seq INTEGER NOT NULL,
            automation_key TEXT NOT NULL,
            contact_id BIGINT NOT NULL,
            logged_at TIMESTAMPTZ NOT NULL,
            step TEXT NOT NULL,
            outcome TEXT NOT NULL,
            detail TEXT,
            PRIMARY KEY (enrollment_id, seq)
        );
        --pg CREATE INDEX enrollment_log_automation ON enrollment_log (automation_key, step);
        --pg CREATE INDEX enrollment_log_contact ON enrollment_log (contact_id);

        CREATE TABLE outbox (
            idempotency_key TEXT PRIMARY KEY,
            enrollment_id BIGINT NOT NULL,
            automation_key TEXT NOT NULL,
            step TEXT NOT NULL,
            contact_id BIGINT NOT NULL,
            channel TEXT NOT NULL,
            category TEXT NOT NULL,
            payload {json} NOT NULL,
            status TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            next_attempt_at TIMESTAMPTZ NOT NULL,
            claimed_at TIMESTAMPTZ,
            created_at TIMESTAMPTZ NOT NULL,
            sent_at TIMESTAMPTZ,
            last_error TEXT
        );
        --pg CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE status = 'pending';
        --pg CREATE INDEX outbox_contact ON outbox (contact_id, channel);

        CREATE TABLE onsite_messages (
            idempotency_key TEXT PRIMARY KEY,
            contact_id BIGINT NOT NULL,
            automation_key TEXT NOT NULL,
            message {json} NOT NULL,
            created_at TIMESTAMPTZ NOT NULL,
            expires_at TIMESTAMPTZ NOT NULL,
            shown_at TIMESTAMPTZ
        );
        --pg CREATE INDEX onsite_contact ON onsite_messages (contact_id);

        CREATE TABLE unsubscribes (
            contact_id BIGINT NOT NULL,
            channel TEXT NOT NULL,
            unsubscribed_at TIMESTAMPTZ NOT NULL,
            source TEXT NOT NULL,
            PRIMARY KEY (contact_id, channel)
        );

        CREATE TABLE instance_settings (
            name TEXT PRIMARY KEY,
            value TEXT NOT NULL
        );

        CREATE TABLE automation_cursor (
            name TEXT PRIMARY KEY,
            received_at TIMESTAMPTZ NOT NULL,
            updated_at TIMESTAMPTZ NOT NULL
        )
        """,
    ),
    Migration(
        4,
        "dashboard: users, sign-in sessions, journey-map notes, saved segments",
        """
        CREATE TABLE users (
            email TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            role TEXT NOT NULL,
            password_hash TEXT NOT NULL,
            locale TEXT,
            created_at TIMESTAMPTZ NOT NULL,
            disabled_at TIMESTAMPTZ
        );

        CREATE TABLE web_sessions (
            token_hash TEXT PRIMARY KEY,
            email TEXT NOT NULL,
            csrf_token TEXT NOT NULL,
            created_at TIMESTAMPTZ NOT NULL,
            expires_at TIMESTAMPTZ NOT NULL
        );

        CREATE TABLE map_notes (
            note_id TEXT PRIMARY KEY,
            journey_key TEXT NOT NULL,
            stage_key TEXT NOT NULL,
            text TEXT NOT NULL,
            author TEXT NOT NULL,
            created_at TIMESTAMPTZ NOT NULL
        );

        CREATE TABLE segments (
            segment_key TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            source {json} NOT NULL,
            created_by TEXT NOT NULL,
            created_at TIMESTAMPTZ NOT NULL
        );

        CREATE TABLE segment_members (
            segment_key TEXT NOT NULL,
            contact_id BIGINT NOT NULL,
            PRIMARY KEY (segment_key, contact_id)
        )
        """,
    ),
    Migration(
        5,
        "automation triggers on stages, personas, dates and schedules",
        """
        CREATE TABLE automation_triggers (
            automation_key TEXT NOT NULL,
            trigger_digest TEXT NOT NULL,
            armed_at TIMESTAMPTZ NOT NULL,
            since_received TIMESTAMPTZ NOT NULL,
            checked_at TIMESTAMPTZ NOT NULL,
            last_occurrence TEXT,
            PRIMARY KEY (automation_key, trigger_digest)
        );

        CREATE TABLE trigger_occurrences (
            automation_key TEXT NOT NULL,
            contact_id BIGINT NOT NULL,
            occurrence TEXT NOT NULL,
            found_at TIMESTAMPTZ NOT NULL,
            handled_at TIMESTAMPTZ,
            PRIMARY KEY (automation_key, contact_id, occurrence)
        );
        --pg CREATE INDEX trigger_occurrences_pending ON trigger_occurrences (automation_key, found_at) WHERE handled_at IS NULL;
        --pg CREATE INDEX trigger_occurrences_contact ON trigger_occurrences (contact_id)
        """,
    ),
    Migration(
        6,
        "index merged profiles by the contact they were merged into",
        """
        --pg CREATE INDEX contacts_merged_into ON contacts (merged_into) WHERE merged_into IS NOT NULL
        """,
    ),
    Migration(
        7,
        "stage history of accounts (journeys with subject: account)",
        """
        CREATE TABLE account_stage_entries (
            journey_key TEXT NOT NULL,
            account_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            stage TEXT NOT NULL,
            stage_index INTEGER NOT NULL,
            entered_at TIMESTAMPTZ NOT NULL,
            left_at TIMESTAMPTZ,
            message_id TEXT NOT NULL,
            channel TEXT,
            PRIMARY KEY (journey_key, account_id, seq)
        );
        --pg CREATE INDEX account_stage_entries_message ON account_stage_entries (message_id)
        """,
    ),
    Migration(
        8,
        "numbers outside the value domain stored as strings",
        "",
        repair=repair_outside_numbers,
    ),
    Migration(
        9,
        "web origins a browser may send with each write key from",
        """
        ALTER TABLE api_keys ADD COLUMN origins TEXT
        """,
    ),
    Migration(
        10,
        "surveys",
        """
        CREATE TABLE surveys (
            survey_key TEXT PRIMARY KEY,
            version INTEGER NOT NULL,
            status TEXT NOT NULL,
            definition {json} NOT NULL,
            source TEXT NOT NULL,
            created_at TIMESTAMPTZ NOT NULL,
            updated_at TIMESTAMPTZ NOT NULL
        )
        """,
    ),
    Migration(
        11,
        "heatmap clicks in typed columns (copied from the Heatmap Click events stored so far)",
        """
        CREATE TABLE heatmap_clicks (
            message_id TEXT PRIMARY KEY,
            identity_id BIGINT NOT NULL,
            timestamp TIMESTAMPTZ NOT NULL,
            page_path TEXT,
            selector TEXT,
            x DOUBLE PRECISION,
            y DOUBLE PRECISION,
            width DOUBLE PRECISION,
            band TEXT,
            rage BOOLEAN NOT NULL,
            dead BOOLEAN NOT NULL
        );
        --pg CREATE INDEX heatmap_clicks_page ON heatmap_clicks (page_path, timestamp);
        --pg CREATE INDEX heatmap_clicks_identity ON heatmap_clicks (identity_id)
        """,
        repair=_copy_stored_clicks,
    ),
    Migration(
        12,
        "automation documents as written (comments and formatting kept for the editor)",
        """
        ALTER TABLE automation_versions ADD COLUMN document TEXT
        """,
    ),
    Migration(
        13,
        "heatmap screenshots: an image of a page, uploaded to draw its clicks over",
        """
        CREATE TABLE heatmap_screenshots (
            page TEXT NOT NULL,
            band TEXT NOT NULL,
            content_type TEXT NOT NULL,
            image {bytes} NOT NULL,
            width INTEGER NOT NULL,
            height INTEGER NOT NULL,
            uploaded_by TEXT NOT NULL,
            uploaded_at TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (page, band)
        )
        """,
    ),
    Migration(
        14,
        "survey answers in typed columns (copied from the Survey Answered events stored so far)",
        """
        CREATE TABLE survey_answers (
            message_id TEXT PRIMARY KEY,
            identity_id BIGINT NOT NULL,
            timestamp TIMESTAMPTZ NOT NULL,
            survey TEXT,
            kind TEXT,
            score DOUBLE PRECISION
        );
        --pg CREATE INDEX survey_answers_survey ON survey_answers (survey, timestamp);
        --pg CREATE INDEX survey_answers_identity ON survey_answers (identity_id)
        """,
        repair=_copy_stored_answers,
    ),
    Migration(
        15,
        "survey documents as written (comments and formatting kept for the dashboard's editor)",
        """
        ALTER TABLE surveys ADD COLUMN document TEXT
        """,
    ),
    Migration(
        16,
        "opportunities: what the team plans about a pain point, with owner, priority and status",
        """
        CREATE TABLE opportunities (
            opportunity_id TEXT PRIMARY KEY,
            journey_key TEXT NOT NULL,
            stage_key TEXT,
            pain_key TEXT,
            pain_summary TEXT,
            title TEXT NOT NULL,
            owner TEXT,
            priority TEXT NOT NULL,
            status TEXT NOT NULL,
            created_by TEXT NOT NULL,
            created_at TIMESTAMPTZ NOT NULL,
            updated_at TIMESTAMPTZ NOT NULL
        );
        --pg CREATE INDEX opportunities_journey ON opportunities (journey_key)
        """,
    ),
)
