"""The value domain: what a stored JSON value may be, enforced at the door and forgiven on read.

Every JSON object percorso keeps (an event's ``properties``, ``traits``, ``context`` and
``integrations``, a contact's traits) holds only values that both stores and msgspec read back:

- numbers: integers from -2**63 to 2**64-1, and finite doubles (written non-zero, read non-zero);
- strings: UTF-8 text without NUL (the collector refuses NUL; PostgreSQL cannot hold it);
- nesting and size within the collector's limits (see :class:`percorso.events.Limits`).

A number outside that range (``1e999``, ``-1e309``, ``1e-400``, an integer of 30 or 5,000
digits) is not refused: it is stored as the string it was written as, exactly, with a warning
naming its path. :func:`clean_json` does that at the door; :func:`read_json` reads anything
already stored (rows written before the domain existed) the same way, so no reader fails on it.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import msgspec

INT_MIN = -(2**63)
INT_MAX = 2**64 - 1

#: Every number outside the domain has 16 digits in a row or a digit, an exponent and three
#: digits. Mapped to one byte per class (digits to 0, e and E to e, signs dropped, the rest to a
#: space), both are a plain substring search: far cheaper than a regular expression over every
#: message. A hit (also one inside a string, or an id of digits) only sends the message through
#: the exact check, which decides.
_SHAPE = bytes(
    ord("0") if chr(c).isdigit() and c < 128 else ord("e") if c in b"eE" else ord(" ") for c in range(256)
)
_LONG_RUN = b"0" * 16
#: The same test in SQL (DuckDB's RE2 and PostgreSQL's regular expressions read it alike).
SUSPECT_SQL = "[:\\[,][[:space:]]*-?([0-9]{16}|[0-9]+(\\.[0-9]*)?[eE][+-]?[0-9]{3})"
_SUSPECT_TEXT = re.compile(r"[:\[,]\s*-?(?:[0-9]{16}|[0-9]+(?:\.[0-9]*)?[eE][+-]?[0-9]{3})")

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.encode


class OutsideNumber(str):
    """A number from the wire kept as its text, marked so its path can be reported."""

    __slots__ = ()


def _number(text: str) -> Any:
    """The value of a JSON number token, or :class:`OutsideNumber` when outside the domain."""
    if "." not in text and "e" not in text and "E" not in text:
        if len(text.lstrip("-")) > 20:  # never build a 5,000-digit int only to refuse it
            return OutsideNumber(text)
        value = int(text)
        return value if INT_MIN <= value <= INT_MAX else OutsideNumber(text)
    number = float(text)
    if math.isinf(number):
        return OutsideNumber(text)
    if number == 0.0 and any(c in "123456789" for c in text.partition("e")[0].partition("E")[0]):
        return OutsideNumber(text)  # underflow: written non-zero, would read back as 0
    return number


def json_number(text: str) -> int | float | str:
    """A JSON number token as a value in the domain, or as its own text when outside it."""
    value = _number(text)
    return str(value) if isinstance(value, OutsideNumber) else value


def _no_constant(name: str) -> Any:
    # Python's json reads NaN and Infinity; JSON has no such tokens.
    raise ValueError(f"{name} is not JSON")


def _exact(text: str) -> Any:
    return json.loads(text, parse_int=_number, parse_float=_number, parse_constant=_no_constant)


def _path(parent: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else str(key)


def _plain(value: Any, path: str, found: list[tuple[str, str]]) -> Any:
    """``value`` with every :class:`OutsideNumber` turned into a plain string, paths noted."""
    if isinstance(value, OutsideNumber):
        found.append((path, str(value)))
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v, _path(path, k), found) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v, _path(path, i), found) for i, v in enumerate(value)]
    return value


def outside_warning(path: str, text: str) -> tuple[str, str]:
    shown = text if len(text) <= 40 else f"{text[:20]}…{text[-8:]} ({len(text):,} characters)"
    return (
        path,
        f"the number {shown} is outside what percorso stores (integers up to 64 bits, finite doubles); "
        "it was stored as a string",
    )


def may_be_outside(data: bytes) -> bool:
    """False when no number in ``data`` can be outside the domain (the common, fast case)."""
    shape = data.translate(_SHAPE, b"+-")
    return b"0e000" in shape or _LONG_RUN in shape


def clean_json(text: str, field: str) -> tuple[str, Any, list[tuple[str, str]]] | None:
    """``text`` (a JSON document) with numbers outside the domain turned into their strings:
    the new text, its decoded value and a warning per number; None when nothing changes.

    Example: ``clean_json('{"x": 1e999}', "properties")`` →
    ``('{"x":"1e999"}', {"x": "1e999"}, [("properties.x", "the number 1e999 is outside …")])``.
    """
    if _SUSPECT_TEXT.search(text) is None:
        return None
    found: list[tuple[str, str]] = []
    value = _plain(_exact(text), field, found)
    if not found:
        return None
    return _encode(value).decode(), value, [outside_warning(p, t) for p, t in found]


def read_json(text: str | bytes | None, default: Any = None) -> Any:
    """A stored JSON document, whatever it holds: numbers outside the domain read as their
    strings, and a document no JSON reader can read (never written by percorso) reads as
    ``{"$unreadable": …}`` instead of failing the whole answer."""
    if text is None or text == "" or text == b"":
        return {} if default is None else default
    data = text.encode("utf-8") if isinstance(text, str) else text
    try:
        return _decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError, ValueError):
        pass
    raw = data.decode("utf-8", "replace")
    try:
        return _plain(_exact(raw), "", [])
    except (ValueError, RecursionError):
        return {"$unreadable": raw[:200]}
