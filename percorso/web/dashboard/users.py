"""Dashboard users, their roles and sign-in sessions.

Passwords are hashed with Argon2id; a session is a random token in an HttpOnly cookie, of which
only the SHA-256 is stored, with its own CSRF token. Roles, from least to most:

* ``viewer`` reads every page;
* ``editor`` also pauses and edits automations, writes map notes and saves segments;
* ``admin`` also manages users and API keys, and exports or erases contacts.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from percorso.store import Store

ROLES = ("viewer", "editor", "admin")
SESSION_DAYS = 14
MIN_PASSWORD = 10
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")

_hasher = PasswordHasher()
# Verified when the e-mail is unknown, so a wrong address takes as long as a wrong password.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class UserError(ValueError):
    """A user could not be created or changed; the message says why."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class User:
    email: str
    name: str
    role: str
    locale: str | None

    def can(self, role: str) -> bool:
        """True when this user's role is ``role`` or above it."""
        return ROLES.index(self.role) >= ROLES.index(role)


@dataclass(frozen=True)
class WebSession:
    user: User
    csrf_token: str
    expires_at: datetime


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def add_user(store: Store, email: str, password: str, *, role: str = "viewer", name: str = "") -> User:
    """Creates a user. Example: ``add_user(store, "anna@example.it", "a long passphrase", role="admin")``."""
    email = email.strip().lower()
    if not EMAIL.match(email):
        raise UserError(f"{email!r} is not an e-mail address", "email")
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}, not {role!r}", "role")
    if len(password) < MIN_PASSWORD:
        raise UserError(f"the password needs at least {MIN_PASSWORD} characters", "password")
    user = User(email=email, name=name.strip() or email.split("@")[0], role=role, locale=None)
    with store.writing() as s:
        if s.rows("SELECT 1 FROM users WHERE email = ?", [email]):
            raise UserError(f"a user {email} already exists", "email")
        s.execute(
            "INSERT INTO users (email, name, role, password_hash, created_at) VALUES (?, ?, ?, ?, ?)",
            [email, user.name, role, _hasher.hash(password), datetime.now(UTC)],
        )
    return user


def set_password(store: Store, email: str, password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise UserError(f"the password needs at least {MIN_PASSWORD} characters", "password")
    with store.writing() as s:
        if not s.rows("SELECT 1 FROM users WHERE email = ?", [email.lower()]):
            raise UserError(f"no user {email}", "email")
        s.execute(
            "UPDATE users SET password_hash = ? WHERE email = ?", [_hasher.hash(password), email.lower()]
        )
        s.execute("DELETE FROM web_sessions WHERE email = ?", [email.lower()])


def set_role(store: Store, email: str, role: str) -> None:
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}, not {role!r}", "role")
    with store.writing() as s:
        if not s.rows("SELECT 1 FROM users WHERE email = ?", [email.lower()]):
            raise UserError(f"no user {email}", "email")
        s.execute("UPDATE users SET role = ? WHERE email = ?", [role, email.lower()])


def set_locale(store: Store, email: str, locale: str) -> None:
    with store.writing() as s:
        s.execute("UPDATE users SET locale = ? WHERE email = ?", [locale, email.lower()])


def list_users(store: Store) -> list[dict[str, object]]:
    with store.session() as s:
        return s.dicts("SELECT email, name, role, locale, created_at, disabled_at FROM users ORDER BY email")


def remove_user(store: Store, email: str) -> bool:
    with store.writing() as s:
        found = s.rows("SELECT 1 FROM users WHERE email = ?", [email.lower()])
        s.execute("DELETE FROM web_sessions WHERE email = ?", [email.lower()])
        s.execute("DELETE FROM users WHERE email = ?", [email.lower()])
    return bool(found)


def user_count(store: Store) -> int:
    with store.session() as s:
        return int(s.rows("SELECT count(*) FROM users WHERE disabled_at IS NULL")[0][0])


def sign_in(store: Store, email: str, password: str) -> tuple[str, WebSession] | None:
    """Checks the password; on success returns the new session's cookie token and the session."""
    email = email.strip().lower()
    with store.session() as s:
        rows = s.rows(
            "SELECT name, role, locale, password_hash FROM users WHERE email = ? AND disabled_at IS NULL",
            [email],
        )
    stored = rows[0][3] if rows else _DUMMY_HASH
    try:
        _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return None
    if not rows:
        return None
    user = User(email=email, name=rows[0][0], role=rows[0][1], locale=rows[0][2])
    token = secrets.token_urlsafe(32)
    now = datetime.now(UTC)
    session = WebSession(
        user=user, csrf_token=secrets.token_urlsafe(32), expires_at=now + timedelta(days=SESSION_DAYS)
    )
    with store.writing() as s:
        if _hasher.check_needs_rehash(stored):
            s.execute("UPDATE users SET password_hash = ? WHERE email = ?", [_hasher.hash(password), email])
        s.execute("DELETE FROM web_sessions WHERE expires_at < ?", [now])
        s.execute(
            "INSERT INTO web_sessions (token_hash, email, csrf_token, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
            [_token_hash(token), email, session.csrf_token, now, session.expires_at],
        )
    return token, session


def session_for(store: Store, token: str) -> WebSession | None:
    """The live session a cookie token belongs to, or None."""
    with store.session() as s:
        rows = s.rows(
            "SELECT u.email, u.name, u.role, u.locale, w.csrf_token, w.expires_at FROM web_sessions w "
            "JOIN users u ON u.email = w.email "
            "WHERE w.token_hash = ? AND w.expires_at > ? AND u.disabled_at IS NULL",
            [_token_hash(token), datetime.now(UTC)],
        )
    if not rows:
        return None
    email, name, role, locale, csrf, expires = rows[0]
    return WebSession(User(email, name, role, locale), csrf, expires)


def sign_out(store: Store, token: str) -> None:
    with store.writing() as s:
        s.execute("DELETE FROM web_sessions WHERE token_hash = ?", [_token_hash(token)])
