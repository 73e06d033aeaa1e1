"""CSV cells a spreadsheet will show as text and never run as a formula.

Event names, traits and stage names come from outside; opened in Excel, LibreOffice or Google
Sheets, a cell such as ``=HYPERLINK("http://x","y")`` would run. Following OWASP's advice on CSV
injection, a text cell whose first character is ``=``, ``+``, ``-``, ``@``, a tab or a carriage
return gets a leading ``'``, which spreadsheets treat as "this is text" and do not display. The
first character is looked for after any leading whitespace too (some spreadsheets trim it on
import), and the full-width forms of the four signs count as well. Numbers stay numbers: ``-3``,
as a number or as the text ``"-3"``, is written as is.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

_TRIGGERS = frozenset("=+-@\t\r＝＋－＠")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def safe_cell(value: Any) -> Any:
    """``value`` as it may go into a CSV cell. Example: ``safe_cell("=1+2")`` → ``"'=1+2"``."""
    if not isinstance(value, str) or not value:
        return value
    if value[0] in _TRIGGERS or value.lstrip()[:1] in _TRIGGERS:
        if _NUMBER.fullmatch(value.strip()):
            return value
        return "'" + value
    return value


def safe_row(values: Iterable[Any]) -> list[Any]:
    """Every cell of a row through :func:`safe_cell`."""
    return [safe_cell(v) for v in values]
