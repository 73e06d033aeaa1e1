"""Touchpoint channels: which medium an event came through (web, email, store, …), by rules."""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import translate
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

FIELDS = ("utm_medium", "utm_source", "referrer_host", "internal_referrer", "library", "type", "event")

#: Values Segment's own libraries put in a top-level ``channel`` field. They describe the
#: transport, not the touchpoint, so they never count as an explicit channel.
SEGMENT_TRANSPORT_VALUES = frozenset({"client", "server", "browser", "mobile"})

_SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")


class ChannelRulesError(ValueError):
    """The channel rules file is not usable; the message names the rule and field."""


@dataclass(frozen=True)
class ChannelRule:
    channel: str
    conditions: tuple[tuple[str, re.Pattern[str]], ...]

    def matches(self, facts: dict[str, str]) -> bool:
        return all(pattern.match(facts.get(name, "")) for name, pattern in self.conditions)


def valid_channel_name(value: str) -> bool:
    """Channel names are short slugs: ``call-center``, ``store``, ``web``."""
    return bool(_SLUG.match(value))


def parse_rules(document: Any, origin: str = "channel rules") -> tuple[ChannelRule, ...]:
    if not isinstance(document, dict) or not isinstance(document.get("rules"), list):
        raise ChannelRulesError(f"{origin}: expected a mapping with a 'rules' list")
    rules = []
    for i, raw in enumerate(document["rules"], start=1):
        if not isinstance(raw, dict) or not isinstance(raw.get("channel"), str):
            raise ChannelRulesError(f"{origin}: rule {i} needs a 'channel' name")
        channel = raw["channel"].strip().lower()
        if not valid_channel_name(channel):
            raise ChannelRulesError(f"{origin}: rule {i}: {channel!r} is not a valid channel name")
        conditions = []
        for key, patterns in raw.items():
            if key == "channel":
                continue
            if key not in FIELDS:
                raise ChannelRulesError(
                    f"{origin}: rule {i} ({channel}): unknown field {key!r}; known fields: {', '.join(FIELDS)}"
                )
            if isinstance(patterns, str):
                patterns = [patterns]
            if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
                raise ChannelRulesError(f"{origin}: rule {i} ({channel}): {key} must be a list of patterns")
            regex = "|".join(f"(?:{translate(p.lower())})" for p in patterns)
            conditions.append((key, re.compile(regex)))
        rules.append(ChannelRule(channel, tuple(conditions)))
    return tuple(rules)


def load_rules(path: str | Path | None = None) -> tuple[ChannelRule, ...]:
    """The rules in ``path``, or the built-in ones when no path is given."""
    if path:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
            document = yaml.safe_load(text)
        except (OSError, yaml.YAMLError) as exc:
            raise ChannelRulesError(f"{p}: cannot read channel rules: {exc}") from None
        return parse_rules(document, str(p))
    text = resources.files("percorso").joinpath("channels.yaml").read_text(encoding="utf-8")
    return parse_rules(yaml.safe_load(text), "built-in channel rules")


class ChannelClassifier:
    """Assigns a channel to an event from its facts; first matching rule wins."""

    def __init__(self, rules: tuple[ChannelRule, ...]):
        self.rules = rules
        self._cache: dict[tuple[str, ...], str] = {}

    def classify(self, facts: dict[str, str]) -> str:
        return self.classify_facts(*(facts.get(name, "") for name in FIELDS))

    def classify_facts(self, *values: str) -> str:
        """Like :meth:`classify`, with the facts given positionally in ``FIELDS`` order."""
        # Facts repeat heavily (same library, same campaign), so results are memoised.
        key = values
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        channel = "other"
        facts = dict(zip(FIELDS, values, strict=True))
        for rule in self.rules:
            if rule.matches(facts):
                channel = rule.channel
                break
        if len(self._cache) < 100_000:
            self._cache[key] = channel
        return channel
