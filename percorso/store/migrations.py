"""Versioned schema migrations, written once for both engines.

Each migration is SQL with a few dialect placeholders (``{json}`` for the JSON column type).
Applied in order by ``percorso migrate`` and on start; applied versions are recorded in
``schema_migrations``. Never edit a released migration: add a new one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


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
)
