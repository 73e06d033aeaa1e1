"""The dashboard's languages: English and Italian text, numbers and dates in the reader's locale.

Text lives in ``messages.yaml`` (one key, both languages side by side, so a missing translation
is visible in review and caught by a test). The language is, in order: the ``lang`` cookie set
by the switcher, the signed-in user's saved choice, the browser's ``Accept-Language``, English.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from babel import Locale
from babel.dates import format_date, format_time, format_timedelta
from babel.numbers import format_currency, format_decimal, format_percent
from babel.units import format_unit

LANGS = ("en", "it")
DEFAULT = "en"
BABEL_LOCALES = {"en": "en_GB", "it": "it_IT"}
COOKIE = "percorso_lang"


@cache
def catalog() -> dict[str, dict[str, str]]:
    data = yaml.safe_load((Path(__file__).parent / "messages.yaml").read_text(encoding="utf-8"))
    return {str(k): {str(lang): str(text) for lang, text in v.items()} for k, v in data.items()}


def negotiate(accept_language: str | None) -> str:
    """The best of our languages for an ``Accept-Language`` header (q-values respected)."""
    best, best_q = DEFAULT, -1.0
    for part in (accept_language or "").split(","):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                q = 0.0
        lang = tag.strip().lower().split("-")[0]
        if lang in LANGS and q > best_q:
            best, best_q = lang, q
    return best


class Translator:
    """Text and formatting for one language; templates get it as ``t``, ``num``, ``pct``, ``date``."""

    def __init__(self, lang: str):
        self.lang = lang if lang in LANGS else DEFAULT
        self.locale = Locale.parse(BABEL_LOCALES[self.lang])

    def __call__(self, key: str, **values: Any) -> str:
        entry = catalog().get(key)
        if entry is None:
            return key
        text = entry.get(self.lang) or entry[DEFAULT]
        return text.format(**values) if values else text

    def num(self, value: Any, digits: int = 0) -> str:
        if value is None:
            return "–"
        fmt = "#,##0" + ("." + "0" * digits if digits else "")
        return format_decimal(value, format=fmt, locale=self.locale)

    def money(self, value: Any, currency: str) -> str:
        """An amount in ``currency`` as this language writes it (``€1,234.50`` / ``1.234,50 €``)."""
        if value is None:
            return "–"
        return format_currency(value, currency, locale=self.locale)

    def action(self, label: str) -> str:
        """A map action as people say it: ``page: Home`` is Viewed “Home” (Ha visto “Home”)."""
        kind, sep, rest = label.partition(":")
        if sep and kind in ("page", "screen", "identify", "group", "alias"):
            name = rest.strip()
            return self(f"action.{kind}", name=name) if name else self(f"action.{kind}_bare")
        return label

    def kpi(self, metric: str, value: Any, currency: str | None = None) -> str:
        """A KPI's value as its metric reads: money, a share, a time, a score or a count."""
        if value is None:
            return "–"
        if metric == "revenue" and currency:
            return self.money(value, currency)
        if metric in ("conversion", "funnel"):
            return self.pct(value)
        if "time" in metric:
            return self.duration(value)
        if metric in ("nps", "csat"):
            return self.num(value, 1)
        return self.num(value)

    def pct(self, value: Any, digits: int = 1) -> str:
        if value is None:
            return "–"
        fmt = "#,##0" + ("." + "0" * digits if digits else "") + "%"
        return format_percent(value, format=fmt, locale=self.locale)

    def date(self, value: Any, fmt: str = "medium") -> str:
        if value is None:
            return "–"
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        return format_date(value, format=fmt, locale=self.locale)

    def datetime(self, value: Any) -> str:
        if value is None:
            return "–"
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        # One date style per language: the date as :meth:`date` writes it, then the time
        # ("7 Dec 2026, 14:48", "7 dic 2026, 14:48"), never a second, numeric style (07/12/2026).
        return f"{format_date(value, format='medium', locale=self.locale)}, {format_time(value, format='short', locale=self.locale)}"

    def ago(self, seconds: Any) -> str:
        """How long ago, as this language says it: "6 days ago", "6 giorni fa"."""
        if seconds is None:
            return "–"
        # threshold 2.5: a unit is used from 2.5 of it, so 6 days stay days, 45 days are 6 weeks
        return format_timedelta(
            -timedelta(seconds=float(seconds)), threshold=2.5, add_direction=True, locale=self.locale
        )

    def span(self, seconds: Any) -> str:
        """How long, in whole units as people count them: "47 days" from two days on, then
        hours, then minutes ("47 giorni", "5 ore")."""
        if seconds is None:
            return "–"
        s = max(float(seconds), 0.0)
        if s >= 2 * 86_400:
            value, unit = int(s // 86_400), "duration-day"
        elif s >= 3600:
            value, unit = int(s // 3600), "duration-hour"
        else:
            value, unit = max(int(s // 60), 1), "duration-minute"
        return format_unit(value, unit, length="long", locale=self.locale)

    def duration(self, seconds: Any) -> str:
        """A time span the way people say it: 40 min, 3.5 h, 12 days."""
        if seconds is None:
            return "–"
        s = float(seconds)
        if s < 3600:
            return f"{self.num(s / 60)} {self('unit.min')}"
        if s < 2 * 86400:
            return f"{self.num(s / 3600, 1)} {self('unit.hours')}"
        return f"{self.num(s / 86400, 1)} {self('unit.days')}"
