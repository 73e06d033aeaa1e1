"""Signed links in emails: unsubscribe (``/u/{token}``), the open pixel (``/t/o/{token}``) and
tracked links (``/t/c/{token}?u=<url>&s=<signature>``).

A token is the signed value in URL-safe base64 and an HMAC of it, ``<base64>.<hex>``: nothing in
it needs escaping, so it reaches the route as one path segment. Each kind of link signs with its
own purpose, so a signature made for one (a tracked link's URL) is never accepted as another (an
unsubscribe). The secret is the installation's ``link_secret``.

Links sent before this format (the value percent-escaped, the HMAC without a purpose) are still
accepted when their value has the shape that kind of link signed: a contact for unsubscribe, an
outbox key for opens and clicks.

Example::

    >>> token = sign("s3cret", UNSUBSCRIBE, "42:email")
    >>> read("s3cret", UNSUBSCRIBE, token)
    '42:email'
    >>> read("s3cret", MESSAGE, token) is None
    True
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from typing import Any
from urllib.parse import quote, unquote

UNSUBSCRIBE = "unsubscribe"  # value: "<contact id>:email"
MESSAGE = "message"  # value: the email's outbox key, for its open pixel and tracked links
LINK = "link"  # value: a tracked link's target URL
VISITOR = "visitor"  # value: an anonymous id the server issued to a browser
SURVEY = "survey"  # value: "<survey key>|<contact id>|<the email's outbox key>"

_MAC_CHARS = 32  # hex characters: 128 bits
# What each purpose signed in the earlier format, so an old link cannot stand for another kind.
_LEGACY_SHAPES = {
    UNSUBSCRIBE: re.compile(r"[0-9]{1,19}:email"),
    MESSAGE: re.compile(r"[a-z][a-z0-9_-]{0,62}/[0-9]{1,19}/[0-9]{1,9}"),
    LINK: re.compile(r"https?://\S+"),
    VISITOR: re.compile(r"(?!)"),  # new with this format: no earlier tokens
    SURVEY: re.compile(r"(?!)"),
}


def signature(secret: str, purpose: str, value: str) -> str:
    """The hex HMAC of ``value`` for ``purpose``."""
    message = f"{purpose}\x00{value}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()[:_MAC_CHARS]


def sign(secret: str, purpose: str, value: str) -> str:
    """A token carrying ``value``, for a link of the given purpose."""
    encoded = base64.urlsafe_b64encode(value.encode()).rstrip(b"=").decode()
    return f"{encoded}.{signature(secret, purpose, value)}"


def read(secret: str, purpose: str, token: str) -> str | None:
    """The value a token signed for ``purpose`` carries, or None for anything else."""
    encoded, _, mac = token.rpartition(".")
    value = _decode(encoded)
    if value is not None and _same(mac, signature(secret, purpose, value)):
        return value
    legacy = unquote(encoded)
    if _LEGACY_SHAPES[purpose].fullmatch(legacy) and _same(mac, _legacy_signature(secret, legacy)):
        return legacy
    return None


def verify_signature(secret: str, purpose: str, value: str, mac: str) -> bool:
    """Whether ``mac`` is the signature of ``value`` for ``purpose`` (or the earlier format's)."""
    if _same(mac, signature(secret, purpose, value)):
        return True
    return bool(_LEGACY_SHAPES[purpose].fullmatch(value)) and _same(mac, _legacy_signature(secret, value))


def unsubscribe_url(base_url: str, secret: str, contact_id: int) -> str:
    return f"{base_url}/u/{sign(secret, UNSUBSCRIBE, f'{contact_id}:email')}"


def survey_url(
    base_url: str, secret: str, survey: str, score: Any = None, *, contact_id: int, email_key: str
) -> str:
    """A link answering ``survey`` from one email, one click per score (``?score=9``)."""
    token = sign(secret, SURVEY, f"{survey}|{contact_id}|{email_key}")
    return f"{base_url}/s/{token}" + (f"?score={quote(str(score), safe='')}" if score is not None else "")


def open_url(base_url: str, secret: str, key: str) -> str:
    return f"{base_url}/t/o/{sign(secret, MESSAGE, key)}"


def click_url(base_url: str, secret: str, key: str, url: str) -> str:
    target = quote(url, safe="")
    return f"{base_url}/t/c/{sign(secret, MESSAGE, key)}?u={target}&s={signature(secret, LINK, url)}"


_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")


def _decode(encoded: str) -> str | None:
    """The value of a token's base64 part, read strictly: only the URL-safe alphabet, no
    padding, and only the one spelling :func:`sign` writes (so no two tokens carry one value)."""
    if not _BASE64URL.fullmatch(encoded):
        return None
    try:
        raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        value = raw.decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != encoded:
        return None
    return value


def _same(given: str, expected: str) -> bool:
    # compare_digest refuses non-ASCII text; bytes compare whatever a client sent.
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode())


def _legacy_signature(secret: str, value: str) -> str:
    return hmac.new(secret.encode(), value.encode(), hashlib.sha256).hexdigest()[:_MAC_CHARS]
