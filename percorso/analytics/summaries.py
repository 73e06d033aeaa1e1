"""Pain-point summaries in English and Italian: one sentence a person reads on the map.

Pure functions of a finding's kind and its facts, so each language is tested on its own
(``tests/test_painpoints.py``). Step labels are the journey's own and stay as written.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from babel.dates import format_date

LANGS = ("en", "it")
#: The locales dates are written in: the dashboard's (web/dashboard/i18n.py), one style per language.
LOCALES = {"en": "en_GB", "it": "it_IT"}


def summaries(kind: str, facts: dict[str, Any]) -> dict[str, str]:
    """The summary of a finding in every language: ``{"en": ..., "it": ...}``.

    >>> summaries("loop", {"share": 0.31, "step": "Product Added", "next": "Checkout Started"})["it"]
    "Il 31% dei contatti torna da «Checkout Started» a «Product Added» entro un'ora"
    """
    return {"en": _ENGLISH[kind](_in_language(facts, "en")), "it": _ITALIAN[kind](_in_language(facts, "it"))}


def _in_language(facts: dict[str, Any], lang: str) -> dict[str, Any]:
    """The facts with each one given per language (``{"en": …, "it": …}``) in ``lang``."""
    return {k: v[lang] if isinstance(v, dict) and set(v) == set(LANGS) else v for k, v in facts.items()}


def _pct(value: float) -> str:
    return f"{value:.0%}"


PLATFORMS = {"ios": "iOS", "android": "Android", "web": "Web", "other": "other platforms"}


#: The dimensions percorso names itself, in each language (properties and traits keep their keys).
DIMENSIONS = {
    "channel": {"en": "channel", "it": "canale"},
    "campaign": {"en": "campaign", "it": "campagna"},
    "first_campaign": {"en": "first campaign", "it": "prima campagna"},
    "persona": {"en": "persona", "it": "persona"},
}


def segment_label(segment: dict[str, Any] | None, lang: str = "en") -> str | None:
    """A segment as a person reads it: ``{"platform": "android"}`` is "Android",
    ``{"channel": "app"}`` "channel app" ("canale app"), ``{"property:device": "mobile"}``
    "device mobile", ``{"trait:plan": "gold"}`` "plan gold"."""
    if not segment:
        return None
    parts = []
    for dim, value in segment.items():
        if dim == "platform":
            parts.append(PLATFORMS.get(str(value), str(value)))
        else:
            name = DIMENSIONS.get(dim, {}).get(lang) or dim.split(":", 1)[-1]
            parts.append(f"{name} {value}")
    return ", ".join(parts)


def segment_labels(segment: dict[str, Any] | None) -> dict[str, str] | None:
    """:func:`segment_label` in every language, as a fact of :func:`summaries`."""
    if not segment:
        return None
    return {lang: str(segment_label(segment, lang)) for lang in LANGS}


def _in(rate: float, baseline: float) -> tuple[str, str, str]:
    """Two shares as counts of people, out of 10 when both read well so (3 in 10, 1 in 10), else
    out of 100: (segment count, baseline count, the denominator)."""
    if min(rate, baseline) >= 0.095 and all(abs(v * 10 - round(v * 10)) <= 0.15 for v in (rate, baseline)):
        return str(round(rate * 10)), str(round(baseline * 10)), "10"
    return str(round(rate * 100)), str(round(baseline * 100)), "100"


def _times(value: float, lang: str) -> str:
    text = f"{value:.1f}"
    return text.replace(".", ",") if lang == "it" else text


def _day(value: date, lang: str) -> str:
    """A day as the dashboard writes dates in that language: 14 Sept 2026, 14 set 2026."""
    return format_date(value, format="medium", locale=LOCALES[lang])


def _dal(day: date) -> str:
    """ "dal 14 set 2026", but "dall'8 set 2026" (otto), "dall'1 …" and "dall'11 …" (a vowel sound)."""
    return f"dall'{_day(day, 'it')}" if day.day in (1, 8, 11) else f"dal {_day(day, 'it')}"


def _al(day: date) -> str:
    return f"all'{_day(day, 'it')}" if day.day in (1, 8, 11) else f"al {_day(day, 'it')}"


def _il(value: float, capital: bool = False) -> str:
    """The Italian article and percentage: "il 42%", but "l'8%", "l'11%", "l'80%" (a vowel sound)
    and "lo 0%" (zero)."""
    text = _pct(value)
    number = int(text.rstrip("%"))
    vowel = number in (1, 8, 11) or 80 <= number <= 89 or 800 <= number <= 899
    article = "lo " if number == 0 else "l'" if vowel else "il "
    if capital:
        article = article.capitalize()
    return f"{article}{text}"


_ENGLISH = {
    "dropoff": lambda f: "{s}: {0} in {2} give up after {step}, against {1} in {2} elsewhere".format(
        *_in(f["rate"], f["baseline"]), s=f["segment"], step=f["step"]
    ),
    "slow": lambda f: (
        f"{f['segment']}: {f['step']} → {f['next']} takes {_times(f['ratio'], 'en')}x the usual time"
    ),
    "later": lambda f: (
        "{s}: {0} in {2} take {step} → {next} only in a later visit, against {1} in {2} elsewhere".format(
            *_in(f["rate"], f["baseline"]), s=f["segment"], step=f["step"], next=f["next"]
        )
    ),
    "dip": lambda f: (
        f"{f['segment'] + ': ' if f.get('segment') else ''}{f['step']} → {f['next']} converted "
        f"{_pct(f['rate'])} of visits from {_day(f['start'], 'en')} to {_day(f['end'], 'en')}, "
        f"against {_pct(f['baseline'])} in the rest of the period"
    ),
    "support": lambda f: (
        f"{_pct(f['share'])} of contacts contact support after {f['step']} (other steps: {_pct(f['baseline'])})"
    ),
    "errors": lambda f: (
        f"{_pct(f['share'])} of contacts hit an error after {f['step']} (other steps: {_pct(f['baseline'])})"
    ),
    "loop": lambda f: (
        f"{f['segment'] + ': from' if f.get('segment') else 'From'} {_day(f['start'], 'en')} to "
        f"{_day(f['end'], 'en')}, {_pct(f['share'])} go back from {f['next']} to {f['step']} within an hour, "
        f"against {_pct(f['baseline'])} in the rest of the period"
        if f.get("start")
        else f"{f['segment']}: {_pct(f['share'])} go back from {f['next']} to {f['step']} within an hour, "
        f"against {_pct(f['baseline'])} elsewhere"
        if f.get("segment")
        else f"{_pct(f['share'])} of contacts go back from {f['next']} to {f['step']} within an hour"
    ),
    "score_drop": lambda f: (
        f"{f['metric']} in {f['stage']} fell to {_score(f, 'en')} from {_score(f, 'en', 'before')} "
        "in the period before"
    ),
    "frustration": lambda f: (
        f"{_pct(f['share'])} of clicks on {f['selector']} ({f['page']}) are rage or dead clicks "
        f"(rest of the site: {_pct(f['baseline'])})"
    ),
}

_ITALIAN = {
    "dropoff": lambda f: "{s}: {0} su {2} abbandonano dopo «{step}», contro {1} su {2} degli altri".format(
        *_in(f["rate"], f["baseline"]), s=f["segment"], step=f["step"]
    ),
    "slow": lambda f: (
        f"{f['segment']}: «{f['step']}» → «{f['next']}» richiede {_times(f['ratio'], 'it')} volte il tempo abituale"
    ),
    "later": lambda f: (
        "{s}: {0} su {2} passano da «{step}» a «{next}» solo in una visita successiva, contro {1} su {2} degli altri".format(
            *_in(f["rate"], f["baseline"]), s=f["segment"], step=f["step"], next=f["next"]
        )
    ),
    "dip": lambda f: (
        f"{f['segment'] + ': ' if f.get('segment') else ''}«{f['step']}» → «{f['next']}» ha convertito "
        f"{_il(f['rate'])} delle visite {_dal(f['start'])} {_al(f['end'])}, "
        f"contro {_il(f['baseline'])} nel resto del periodo"
    ),
    "support": lambda f: (
        f"{_il(f['share'], capital=True)} dei contatti si rivolge all'assistenza dopo «{f['step']}» "
        f"(negli altri passi: {_il(f['baseline'])})"
    ),
    "errors": lambda f: (
        f"{_il(f['share'], capital=True)} dei contatti incontra un errore dopo «{f['step']}» "
        f"(negli altri passi: {_il(f['baseline'])})"
    ),
    "loop": lambda f: (
        f"{f['segment'] + ': ' + _dal(f['start']) if f.get('segment') else _dal(f['start']).capitalize()} "
        f"{_al(f['end'])}, "
        f"{_il(f['share'])} torna da «{f['next']}» a «{f['step']}» entro un'ora, "
        f"contro {_il(f['baseline'])} nel resto del periodo"
        if f.get("start")
        else f"{f['segment']}: {_il(f['share'])} torna da «{f['next']}» a «{f['step']}» entro un'ora, "
        f"contro {_il(f['baseline'])} degli altri"
        if f.get("segment")
        else f"{_il(f['share'], capital=True)} dei contatti torna da «{f['next']}» a «{f['step']}» entro un'ora"
    ),
    "score_drop": lambda f: (
        f"{_article(f['metric'])}{f['metric']} in «{f['stage']}» è sceso a {_score(f, 'it')} da {_score(f, 'it', 'before')} "
        "nel periodo precedente"
    ),
    "frustration": lambda f: (
        f"{_il(f['share'], capital=True)} dei clic su {f['selector']} ({f['page']}) sono clic di rabbia "
        f"o a vuoto (resto del sito: {_il(f['baseline'])})"
    ),
}


def _article(metric: str) -> str:
    return "L'" if metric == "NPS" else "Il "


def _score(facts: dict[str, Any], lang: str, which: str = "now") -> str:
    """An NPS as a whole number, a CSAT as a whole percentage."""
    value = facts[which]
    return f"{value:.0f}" if facts["metric"] == "NPS" else f"{value:.0f}%"
