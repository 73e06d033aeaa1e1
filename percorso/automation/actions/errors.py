"""The one error every delivery raises, and whether retrying it can help."""

from __future__ import annotations


class DeliveryError(Exception):
    """An email or webhook could not be delivered.

    ``transient`` tells the outbox what to do next: ``True`` means the message itself is fine and
    the receiver was unreachable, slow or busy (connection refused, timeouts, SMTP 4xx, HTTP 429
    or 5xx), so it is retried later; ``False`` means sending the same thing again will fail the
    same way (a recipient refused with SMTP 5xx, an HTTP 4xx, a broken template), so it is given up.
    ``retry_after`` is the receiver's own hint, in seconds, when it sent one.

    Example::

        try:
            send_email(message, settings)
        except DeliveryError as exc:
            outbox.retry(item) if exc.transient else outbox.fail(item, str(exc))
    """

    def __init__(self, message: str, *, transient: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.transient = transient
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"DeliveryError({self.message!r}, transient={self.transient})"
