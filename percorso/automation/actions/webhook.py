"""Webhook steps: POST a signed JSON payload and say whether a failure is worth retrying.

The receiver checks the ``X-Percorso-Signature`` header with :func:`verify` (the same code, or
its few lines ported): ``t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + body>``. The timestamp
inside the signed text stops a captured request from being replayed later. ``Idempotency-Key``
stays the same across retries of one delivery, so the receiver can drop duplicates.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from percorso.automation.actions.egress import DestinationRefused, webhook_client
from percorso.automation.actions.errors import DeliveryError

USER_AGENT = "percorso-webhooks/1"
SIGNATURE_HEADER = "X-Percorso-Signature"
#: Statuses that mean "not now" rather than "never": timeouts, too early, too many requests.
TRANSIENT_STATUSES = frozenset({408, 425, 429})
#: A webhook's ``secret_env`` names a variable with this prefix, so an automation cannot sign
#: with (and so expose to its receiver) any other secret of the worker's environment.
SECRET_ENV_PREFIX = "PERCORSO_WEBHOOK_"
_SECRET_ENV = re.compile(r"PERCORSO_WEBHOOK_[A-Z0-9_]+")


def secret_env_problem(name: str) -> str | None:
    """Why ``name`` may not hold a webhook secret (None when it may).

    Example::

        >>> secret_env_problem("PERCORSO_WEBHOOK_CRM_SECRET") is None
        True
        >>> secret_env_problem("AWS_SECRET_ACCESS_KEY")  # doctest: +ELLIPSIS
        "secret_env must name a variable starting with PERCORSO_WEBHOOK_ ..."
    """
    from percorso.config import SETTING_NAMES

    if not _SECRET_ENV.fullmatch(name) or name in SETTING_NAMES:
        return (
            f"secret_env must name a variable starting with {SECRET_ENV_PREFIX} (upper-case letters, "
            f"digits, _), not {name!r}: put the secret in, e.g., {SECRET_ENV_PREFIX}CRM_SECRET"
        )
    return None


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header value for ``body`` sent at ``timestamp``.

    Example::

        >>> sign("s3cret", 1700000000, b'{"ok":true}')[:15]
        't=1700000000,v1'
    """
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(secret: str, header: str, body: bytes, *, tolerance: int = 300, now: float | None = None) -> bool:
    """Whether ``header`` is a valid signature of ``body``, made within ``tolerance`` seconds of ``now``.

    Several ``v1=`` entries are accepted (any may match), so a sender can sign with an old and a
    new secret while they are rotated. Comparison is constant-time.

    Example::

        >>> verify("s3cret", sign("s3cret", 1700000000, b"{}"), b"{}", now=1700000010)
        True
    """
    timestamp: int | None = None
    candidates: list[str] = []
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                return False
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        return False
    expected = sign(secret, timestamp, body).partition(",v1=")[2]
    # Check every candidate so the time taken does not depend on which one matched.
    matches = [hmac.compare_digest(expected.encode(), candidate.encode()) for candidate in candidates]
    return any(matches)


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def deliver_webhook(
    url: str,
    payload: Mapping[str, Any],
    *,
    secret: str | None,
    idempotency_key: str,
    timeout: float = 10.0,
    client: httpx.Client | None = None,
    now: Callable[[], float] = time.time,
) -> int:
    """POST ``payload`` as JSON to ``url`` and return the 2xx status; anything else raises.

    408, 425, 429, 5xx, timeouts and network errors raise a transient :class:`DeliveryError`
    (with ``retry_after`` when the receiver sent a ``Retry-After`` in seconds); other 4xx and
    redirects raise a permanent one. The error says the status and what it means, never the
    reply's body: stats show it to every viewer. Pass ``client`` to reuse connections across
    deliveries; without one, only public addresses are reached (see egress.py).

    Example::

        deliver_webhook("https://hooks.example.com/percorso", {"event": "Signed Up"},
                        secret=os.environ["HOOK_SECRET"], idempotency_key="run-7:step-notify")
    """
    try:
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, default=_json_default).encode()
    except (TypeError, ValueError) as exc:
        raise DeliveryError(f"the webhook payload for {url} is not JSON: {exc}", transient=False) from exc
    headers = {
        "Content-Type": "application/json",
        "Idempotency-Key": idempotency_key,
        "User-Agent": USER_AGENT,
    }
    if secret is not None:
        headers[SIGNATURE_HEADER] = sign(secret, int(now()), body)
    owned = client is None
    http = webhook_client() if client is None else client
    try:
        with http.stream("POST", url, content=body, headers=headers, timeout=timeout) as response:
            status = response.status_code
            if 200 <= status < 300:
                return status
            raise _status_error(url, status, response.headers)
    except DestinationRefused as exc:
        raise DestinationRefused(f"webhook {url} was not sent: {exc}") from None
    except httpx.TimeoutException as exc:
        raise DeliveryError(f"webhook {url} did not answer within {timeout:g}s", transient=True) from exc
    except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
        raise DeliveryError(f"webhook URL {url!r} is not usable: {exc}", transient=False) from exc
    except httpx.TransportError as exc:
        raise DeliveryError(
            f"could not reach webhook {url}: {type(exc).__name__}: {exc}", transient=True
        ) from exc
    finally:
        if owned:
            http.close()


def _status_error(url: str, status: int, headers: httpx.Headers) -> DeliveryError:
    if status in TRANSIENT_STATUSES or 500 <= status < 600:
        what = "a server error" if status >= 500 else "busy or too early"
        return DeliveryError(
            f"webhook {url} answered {status} ({what}; will retry)",
            transient=True,
            retry_after=_retry_after(headers),
        )
    if 300 <= status < 400:
        location = headers.get("location", "elsewhere")
        return DeliveryError(
            f"webhook {url} answered {status}, redirecting to {location}; redirects are not followed, "
            "so update the automation's URL",
            transient=False,
        )
    return DeliveryError(f"webhook {url} answered {status} (refused; not retried)", transient=False)


def _retry_after(headers: httpx.Headers) -> float | None:
    # Only the delta-seconds form; an HTTP date falls back to our own backoff.
    value = headers.get("retry-after", "").strip()
    return float(value) if value.isdigit() else None


def backoff_seconds(attempt: int, *, base: float = 30.0, cap: float = 6 * 3600.0, key: str = "") -> float:
    """Seconds to wait before retry number ``attempt`` (1 for the first retry): ``base`` doubling
    each time, moved by up to ±10%, and never more than ``cap``.

    The jitter is deterministic — a hash of ``attempt`` and ``key`` — so the schedule is
    reproducible in tests and logs, while deliveries with different keys (pass the idempotency
    key) spread out instead of retrying in lockstep. Doubling outgrows the jitter, so the delay
    always grows until it reaches the cap.

    Example::

        >>> [round(backoff_seconds(n)) for n in (1, 2, 3, 12)]
        [30, 58, 125, 21600]
    """
    if attempt < 1:
        raise ValueError(f"attempt counts retries from 1, not {attempt}")
    raw = base * 2.0 ** min(attempt - 1, 64)  # the cap is reached long before 2**64
    fraction = int.from_bytes(hashlib.sha256(f"{key}:{attempt}".encode()).digest()[:8], "big") / 2**64
    return min(cap, raw * (0.9 + 0.2 * fraction))
