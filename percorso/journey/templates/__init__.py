"""Journey templates shipped with percorso, with English and Italian names."""

from __future__ import annotations

from importlib import resources

TEMPLATES = {
    "five-stages": "Awareness, Consideration, Decision, Purchase, Retention & Advocacy",
    "five-e": "The 5E model: Entice, Enter, Engage, Exit, Extend",
    "loyalty-loop": "Consider, evaluate, buy, enjoy, advocate, bond — customers can loop back",
    "b2b": "Accounts (Segment group calls) through longer cycles: awareness to expansion",
}


def template_text(name: str) -> str:
    if name not in TEMPLATES:
        raise KeyError(name)
    return resources.files(__package__).joinpath(f"{name}.yaml").read_text(encoding="utf-8")
