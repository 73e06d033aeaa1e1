"""Saving, versioning, pausing and listing automations, and the engine's bulk writes."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from percorso.automation.definition import Automation, AutomationError, automation_from_data
from percorso.journey.definition import Problem
from percorso.store import Store
from percorso.store.base import Session


class AutomationNotFound(LookupError):
    def __init__(self, key: str):
        self.key = key
        super().__init__(f"there is no automation {key!r}")


def save_automation(
    store: Store,
    automation: Automation,
    source: str,
    *,
    document: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Stores a new version when the definition changed (same definition: nothing happens).

    Contacts already inside keep running on the version they entered with; new enrollments use
    the newest version. A new automation starts ``active``; an existing one keeps its status.
    ``document`` is the text as written (YAML with its comments), shown again in the editor; a
    document that differs only in comments or layout replaces the current version's without
    making a new version (``changed`` is false, ``document_changed`` true).
    """
    now = now or datetime.now(UTC)
    digest = automation.digest()
    encoded = msgspec.json.encode(automation).decode()
    with store.writing() as s:
        s.lock_named("automations")
        rows = s.rows("SELECT version, status FROM automations WHERE automation_key = ?", [automation.key])
        if rows:
            version, status = int(rows[0][0]), str(rows[0][1])
            same = s.rows(
                "SELECT digest, document FROM automation_versions WHERE automation_key = ? AND version = ?",
                [automation.key, version],
            )
            if same and same[0][0] == digest:
                rewritten = document is not None and document != same[0][1]
                if rewritten:
                    s.execute(
                        "UPDATE automation_versions SET document = ? WHERE automation_key = ? AND version = ?",
                        [document, automation.key, version],
                    )
                return {
                    "key": automation.key,
                    "version": version,
                    "status": status,
                    "changed": False,
                    "document_changed": rewritten,
                }
            version += 1
            s.execute(
                "UPDATE automations SET version = ?, definition = ?, source = ?, updated_at = ? "
                "WHERE automation_key = ?",
                [version, encoded, source, now, automation.key],
            )
        else:
            version, status = 1, "active"
            s.execute(
                "INSERT INTO automations (automation_key, version, status, definition, source, created_at, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [automation.key, version, status, encoded, source, now, now],
            )
        s.execute(
            "INSERT INTO automation_versions (automation_key, version, digest, definition, source, created_at, "
            "document) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [automation.key, version, digest, encoded, source, now, document],
        )
    return {
        "key": automation.key,
        "version": version,
        "status": status,
        "changed": True,
        "document_changed": True,
    }


def automation_document(store: Store, key: str, version: int) -> str | None:
    """The version's document as it was written, when it was stored with one."""
    with store.session() as s:
        rows = s.rows(
            "SELECT document FROM automation_versions WHERE automation_key = ? AND version = ?",
            [key, version],
        )
    return str(rows[0][0]) if rows and rows[0][0] is not None else None


def set_status(store: Store, key: str, status: str, *, now: datetime | None = None) -> dict[str, Any]:
    """Pauses (``paused``: nobody enters, nobody inside moves, nothing is sent) or resumes (``active``)."""
    if status not in ("active", "paused"):
        raise ValueError(f"status must be 'active' or 'paused', not {status!r}")
    now = now or datetime.now(UTC)
    with store.writing() as s:
        found = s.rows("SELECT version FROM automations WHERE automation_key = ?", [key])
        if not found:
            raise AutomationNotFound(key)
        s.execute(
            "UPDATE automations SET status = ?, updated_at = ? WHERE automation_key = ?", [status, now, key]
        )
    return {"key": key, "status": status, "version": int(found[0][0])}


def list_automations(store: Store) -> list[dict[str, Any]]:
    with store.session() as s:
        rows = s.dicts(
            "SELECT a.automation_key AS key, a.version, a.status, a.created_at, a.updated_at, "
            "sum(CASE WHEN n.status IN ('active', 'waiting') THEN 1 ELSE 0 END) AS inside, "
            "count(n.enrollment_id) AS enrolled "
            "FROM automations a LEFT JOIN enrollments n ON n.automation_key = a.automation_key "
            "GROUP BY a.automation_key, a.version, a.status, a.created_at, a.updated_at ORDER BY a.automation_key"
        )
        names = dict(s.rows("SELECT automation_key, definition FROM automations"))
    out = []
    for row in rows:
        definition = msgspec.json.decode(names[row["key"]])
        out.append(
            {
                "key": row["key"],
                "name": definition["name"],
                "version": int(row["version"]),
                "status": row["status"],
                "inside": int(row["inside"] or 0),
                "enrolled": int(row["enrolled"] or 0),
                "createdAt": row["created_at"].isoformat(),
                "updatedAt": row["updated_at"].isoformat(),
            }
        )
    return out


def get_automation(store: Store, key: str, version: int | None = None) -> tuple[Automation, int, str]:
    """The definition (newest version unless one is asked for), its version and status."""
    with store.session() as s:
        head = s.rows("SELECT version, status FROM automations WHERE automation_key = ?", [key])
        if not head:
            raise AutomationNotFound(key)
        wanted = version or int(head[0][0])
        rows = s.rows(
            "SELECT definition FROM automation_versions WHERE automation_key = ? AND version = ?",
            [key, wanted],
        )
    if not rows:
        raise AutomationNotFound(f"{key} version {wanted}")
    return decode_definition(rows[0][0], key), wanted, str(head[0][1])


def decode_definition(text: str, key: str) -> Automation:
    try:
        return automation_from_data(msgspec.json.decode(text), None, f"stored automation {key}", stored=True)
    except AutomationError:
        raise
    except msgspec.DecodeError as exc:
        raise AutomationError([Problem(f"stored automation {key}", None, "", str(exc))]) from None


def instance_secret(store: Store, name: str) -> str:
    """A random secret created once per installation (link signing); kept in the store."""
    with store.session() as s:
        rows = s.rows("SELECT value FROM instance_settings WHERE name = ?", [name])
    if rows:
        return str(rows[0][0])
    with store.writing() as s:
        s.lock_named("instance_settings")
        rows = s.rows("SELECT value FROM instance_settings WHERE name = ?", [name])
        if rows:
            return str(rows[0][0])
        value = secrets.token_urlsafe(32)
        s.execute("INSERT INTO instance_settings (name, value) VALUES (?, ?)", [name, value])
    return value


# -- bulk writes ---------------------------------------------------------------------------

#: Columns of ``enrollments`` the engine writes, with the SQL type each placeholder is cast to
#: (PostgreSQL cannot infer the type of a NULL inside VALUES).
ENROLLMENT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("enrollment_id", "BIGINT"),
    ("automation_key", "TEXT"),
    ("version", "INTEGER"),
    ("contact_id", "BIGINT"),
    ("status", "TEXT"),
    ("step", "TEXT"),
    ("seq", "INTEGER"),
    ("due_at", "TIMESTAMPTZ"),
    ("waiting_since", "TIMESTAMPTZ"),
    ("variant", "TEXT"),
    ("entered_at", "TIMESTAMPTZ"),
    ("exited_at", "TIMESTAMPTZ"),
    ("exit_reason", "TEXT"),
    ("trigger_id", "TEXT"),
    ("entered_pos", "TIMESTAMPTZ"),
    ("goal_at", "TIMESTAMPTZ"),
)


def insert_rows(
    s: Session,
    table: str,
    columns: Sequence[tuple[str, str]],
    rows: Sequence[Sequence[Any]],
    *,
    conflict: str = "",
) -> None:
    names = ", ".join(name for name, _ in columns)
    for source, params in s.row_sources(columns, rows):
        s.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM {source}{conflict}", params)


#: What a step can change in an enrollment; the rest (who, which automation and version, when
#: and by which event they entered) is fixed at entry. Leaving the indexed identity columns out
#: of the UPDATE spares both engines index maintenance.
_MUTABLE = (
    "status",
    "step",
    "seq",
    "due_at",
    "waiting_since",
    "variant",
    "exited_at",
    "exit_reason",
    "goal_at",
)
_UPDATED = [
    i for i, (name, _) in enumerate(ENROLLMENT_COLUMNS) if name == "enrollment_id" or name in _MUTABLE
]


def update_enrollments(s: Session, rows: Sequence[Sequence[Any]]) -> None:
    """Writes enrollment rows (whole, as :data:`ENROLLMENT_COLUMNS`) back, keyed by
    ``enrollment_id``, in a few statements."""
    columns = [ENROLLMENT_COLUMNS[i] for i in _UPDATED]
    assignments = ", ".join(f"{n} = v.{n}" for n, _ in columns if n != "enrollment_id")
    projected = [[row[i] for i in _UPDATED] for row in rows]
    for source, params in s.row_sources(columns, projected):
        s.execute(
            f"UPDATE enrollments SET {assignments} FROM {source} WHERE enrollments.enrollment_id = v.enrollment_id",
            params,
        )
