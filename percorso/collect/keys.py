"""API keys on requests: write keys write; secret keys read, administer and write."""

from __future__ import annotations

import base64
import time

from percorso.store import ApiKey, Store

#: How long a looked-up key is trusted before the store is asked again (revocation delay).
CACHE_SECONDS = 10.0


class KeyRing:
    """Looks keys up in the store, with a short cache so the hot path costs no query."""

    def __init__(self, store: Store):
        self.store = store
        self._cache: dict[str, tuple[ApiKey | None, float]] = {}
        self._origins: tuple[set[str], float] = (set(), 0.0)

    def browser_origins(self) -> set[str]:
        """The web origins some active write key allows (cached like keys)."""
        origins, until = self._origins
        now = time.monotonic()
        if until <= now:
            origins = self.store.browser_origins()
            self._origins = (origins, now + CACHE_SECONDS)
        return origins

    def lookup(self, secret: str) -> ApiKey | None:
        now = time.monotonic()
        hit = self._cache.get(secret)
        if hit is not None and hit[1] > now:
            return hit[0]
        key = self.store.find_api_key(secret)
        if key is not None and key.revoked_at is not None:
            key = None
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[secret] = (key, now + CACHE_SECONDS)
        return key

    def forget(self) -> None:
        self._cache.clear()
        self._origins = (set(), 0.0)


def credential_from_header(header: str | None) -> str | None:
    """The key in an Authorization header: Basic (key as username, as Segment sends it) or Bearer."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    scheme = scheme.lower()
    value = value.strip()
    if scheme == "bearer":
        return value or None
    if scheme == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):  # not base64 (binascii.Error), or non-ASCII text
            return None
        username, _, password = decoded.partition(":")
        return username or password or None
    return None
