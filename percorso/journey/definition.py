"""Journey definitions: stages, touchpoints, personas and KPIs as a declarative document.

A journey is YAML on disk (versioned in git) or JSON over the API. :func:`load_journey` parses it
and reports every problem with the file, line and field, so a typo in a 200-line journey is one
glance away. The structs double as the published JSON Schema (:func:`json_schema`).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import msgspec
import yaml
from babel.numbers import is_currency

KEY_PATTERN = r"^[a-z][a-z0-9_-]{0,62}$"
Key = Annotated[
    str, msgspec.Meta(pattern=KEY_PATTERN, description="lower-case identifier: letters, digits, _ and -")
]
DURATION_PATTERN = r"^[1-9][0-9]{0,5}(m|h|d|w)$"
Duration = Annotated[str, msgspec.Meta(pattern=DURATION_PATTERN, description="30m, 12h, 14d or 2w")]
_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def duration_seconds(value: str) -> int:
    return int(value[:-1]) * _UNITS[value[-1]]


class Name(msgspec.Struct, forbid_unknown_fields=True):
    """A display name in English and Italian (a plain string sets both)."""

    en: str
    it: str | None = None

    def get(self, lang: str = "en") -> str:
        return (self.it if lang == "it" else None) or self.en


Patterns = str | list[str]


class Condition(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """What one event must look like. Every field given must match; globs use ``*`` and ``?``."""

    event: Patterns | None = None  # track event name
    type: Patterns | None = None  # track, page, screen, identify, group, alias
    page: Patterns | None = None  # page path, e.g. "/checkout/*"
    name: Patterns | None = None  # page or screen name
    channel: Patterns | None = None
    properties: dict[str, Any] | None = None  # property equals value (a list: any of them)

    def is_empty(self) -> bool:
        return all(getattr(self, f) is None for f in self.__struct_fields__)


class Entry(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A stage is entered by the first event matching ``any`` — or the ``at_least``-th such event
    within ``within`` of the first one (e.g. three membership-page views in a week)."""

    any: list[Condition]
    at_least: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 1
    within: Duration | None = None


KpiMetric = Literal[
    "contacts", "conversion", "median_time_in_stage", "events", "revenue", "nps", "csat", "funnel"
]


class Kpi(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    name: Name | str
    metric: KpiMetric
    event: str | None = None  # for "events" and "revenue"
    funnel: Key | None = None  # for "funnel": the conversion of this funnel of the journey
    target: float | None = None


class Stage(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    key: Key
    name: Name | str
    enter: Entry
    description: str | None = None
    kpis: list[Kpi] = []


class Touchpoint(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    key: Key
    name: Name | str
    lane: Name | str
    match: list[Condition]


class Behaviour(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """At least ``at_least`` events matching ``event`` (within ``within`` of now, when given)."""

    did: Condition
    at_least: Annotated[int, msgspec.Meta(ge=0, le=100_000)] = 1
    at_most: Annotated[int, msgspec.Meta(ge=0, le=100_000)] | None = None
    within: Duration | None = None


class InStage(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """The contact's current stage in ``journey`` is ``stage`` (or one of a list)."""

    journey: Key
    stage: Key | list[Key]


class PersonaRule(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    traits: dict[str, Any] | None = None  # trait equals value (a list: any of them)
    behaviour: list[Behaviour] = []
    segments: list[str] = []  # member of any of these saved segments (saved from the dashboard)
    stage: InStage | None = None  # in this stage of a journey (its stage history, as last updated)


class Persona(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    key: Key
    name: Name | str
    when: PersonaRule
    description: str | None = None


class FunnelExclusion(Condition, forbid_unknown_fields=True, omit_defaults=True):
    """An event that takes a contact out of the funnel's conversion when done after step
    ``after`` and before step ``before`` (default: the last step) — e.g. a failed payment."""

    after: Annotated[int, msgspec.Meta(ge=1, le=19)] = 1
    before: Annotated[int, msgspec.Meta(ge=2, le=20)] | None = None

    def is_empty(self) -> bool:
        return all(getattr(self, f) is None for f in Condition.__struct_fields__)


class Funnel(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A named sequence of steps inside the journey (checkout, registration) — analysed for pain
    points and shown on the map."""

    key: Key
    name: Name | str
    steps: Annotated[list[Condition], msgspec.Meta(min_length=2, max_length=20)]
    window: Duration = "7d"
    labels: list[str] = []  # step labels; default: the event names
    order: Literal["ordered", "strict", "any"] = "ordered"  # how later steps count (docs/analytics.md)
    exclude: list[FunnelExclusion] = []
    #: what one entry is: each contact once, each visit, or every attempt (docs/analytics.md)
    unit: Literal["contacts", "sessions", "attempts"] = "contacts"
    session_gap: Duration = "30m"  # a visit ends after this long without an event (unit sessions)


class Signals(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """What counts as trouble after a funnel step, for the ``errors`` and ``support`` pain-point
    detectors; each list replaces the default (docs/analytics.md#pain-points)."""

    errors: list[Condition] | None = None
    support: list[Condition] | None = None
    #: browsing (product and page views, searches): going back to it is not a loop worth reporting
    browsing: list[Condition] | None = None


class Journey(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A customer journey: ordered stages, touchpoints grouped into lanes, personas."""

    version: Literal[1]
    key: Key
    name: Name | str
    stages: Annotated[list[Stage], msgspec.Meta(min_length=2, max_length=30)]
    subject: Literal["contact", "account"] = "contact"  # accounts follow Segment group calls (B2B)
    progression: Literal["forward", "loop"] = "forward"
    currency: Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}$", description="ISO 4217 code")] = "EUR"
    description: str | None = None
    touchpoints: list[Touchpoint] = []
    personas: list[Persona] = []
    funnels: list[Funnel] = []
    signals: Signals | None = None
    #: events as people say them, by event name or map action label (``page: Home``):
    #: ``{Order Completed: {en: Placed an order, it: Ha fatto un ordine}}`` (percorso.journey.names)
    events: dict[Annotated[str, msgspec.Meta(min_length=1, max_length=200)], Name | str] = {}

    def stage_keys(self) -> list[str]:
        return [s.key for s in self.stages]


def display(name: Name | str, lang: str = "en") -> str:
    return name if isinstance(name, str) else name.get(lang)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a journey document, where it is and (maybe) how to fix it."""

    source: str
    line: int | None
    field: str
    message: str
    suggestion: str | None = None
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        hint = f" (did you mean {self.suggestion!r}?)" if self.suggestion else ""
        return f"{where}: {self.severity}: {self.field}: {self.message}{hint}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "line": self.line,
            "field": self.field,
            "message": self.message,
            "suggestion": self.suggestion,
            "severity": self.severity,
        }


class JourneyError(ValueError):
    """The document is not a valid journey; ``problems`` lists every error found."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(map(str, problems)))


# -- loading ------------------------------------------------------------------------------


def read_document(text: str, source: str, error: Callable[[list[Problem]], Exception]) -> tuple[Any, Any]:
    """A YAML (or JSON) definition's data and its node tree (for line numbers); ``error`` of the
    problem when the text is not YAML. Journeys, automations and surveys all read this way."""
    try:
        return yaml.safe_load(text), yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise error([Problem(source, line, "", f"not valid YAML: {problem}")]) from None


def type_problem(exc: msgspec.ValidationError, node: Any) -> tuple[str, list[str | int], int | None]:
    """msgspec's complaint about a definition as (message, path, line); an unknown field's line
    is the field's own."""
    message, path = _split_validation_error(str(exc))
    unknown = re.search(r"unknown field `([^`]+)`", message)
    return message, path, _line_of(node, [*path, unknown.group(1)] if unknown else path)


def load_journey(text: str, source: str = "<journey>") -> Journey:
    """Parses and validates a YAML (or JSON) journey document."""
    data, node = read_document(text, source, JourneyError)
    if not isinstance(data, dict):
        raise JourneyError(
            [Problem(source, 1, "", "a journey is a mapping with version, key, name and stages")]
        )
    try:
        journey = msgspec.convert(data, Journey, strict=True)
    except msgspec.ValidationError as exc:
        message, path, line = type_problem(exc, node)
        raise JourneyError([Problem(source, line, _dotted(path), message)]) from None
    problems = semantic_problems(journey, node, source)
    if problems:
        raise JourneyError(problems)
    return journey


def load_journey_file(path: Path | str) -> Journey:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise JourneyError([Problem(str(path), None, "", f"cannot read the file: {exc}")]) from None
    return load_journey(text, str(path))


def semantic_problems(journey: Journey, node: Any = None, source: str = "<journey>") -> list[Problem]:
    """What the types cannot say: unique keys, non-empty conditions, sensible counts."""
    problems: list[Problem] = []

    def add(path: list[str | int], message: str) -> None:
        problems.append(Problem(source, _line_of(node, path), _dotted(path), message))

    if not is_currency(journey.currency):
        add(["currency"], f"{journey.currency!r} is not an ISO 4217 currency code (e.g. EUR, GBP, CHF, USD)")
    for section in ("stages", "touchpoints", "personas", "funnels"):
        seen: dict[str, int] = {}
        for i, item in enumerate(getattr(journey, section)):
            if item.key in seen:
                add([section, i, "key"], f"{item.key!r} is already the key of {section}[{seen[item.key]}]")
            seen.setdefault(item.key, i)
    funnel_keys = [f.key for f in journey.funnels]
    for i, stage in enumerate(journey.stages):
        for j, kpi in enumerate(stage.kpis):
            if kpi.metric == "funnel" and kpi.funnel not in funnel_keys:
                add(
                    ["stages", i, "kpis", j, "funnel"],
                    f"a funnel KPI names one of the journey's funnels ({', '.join(funnel_keys) or 'none defined'})",
                )
    for i, stage in enumerate(journey.stages):
        if not stage.enter.any:
            add(["stages", i, "enter", "any"], "lists no condition: the stage could never be entered")
        for j, condition in enumerate(stage.enter.any):
            if condition.is_empty():
                add(["stages", i, "enter", "any", j], "an empty condition would match every event")
        if stage.enter.at_least > 1 and stage.enter.within is None:
            add(["stages", i, "enter", "within"], "at_least above 1 needs a window, e.g. within: 7d")
        for j, kpi in enumerate(stage.kpis):
            if kpi.metric in ("events", "revenue") and not kpi.event:
                add(["stages", i, "kpis", j, "event"], f"the {kpi.metric} metric needs an event name")
    for i, funnel in enumerate(journey.funnels):
        for j, condition in enumerate(funnel.steps):
            if condition.is_empty():
                add(["funnels", i, "steps", j], "an empty step would match every event")
        if funnel.labels and len(funnel.labels) != len(funnel.steps):
            add(["funnels", i, "labels"], f"has {len(funnel.labels)} labels for {len(funnel.steps)} steps")
        n = len(funnel.steps)
        for j, excluded in enumerate(funnel.exclude):
            if excluded.is_empty():
                add(["funnels", i, "exclude", j], "an empty exclusion would match every event")
            before = excluded.before if excluded.before is not None else n
            if not excluded.after < before <= n:
                add(
                    ["funnels", i, "exclude", j, "before" if excluded.before is not None else "after"],
                    f"between step {excluded.after} and step {before} is not a range of this {n}-step funnel "
                    f"(1 <= after < before <= {n})",
                )
    for i, touchpoint in enumerate(journey.touchpoints):
        if not touchpoint.match or any(c.is_empty() for c in touchpoint.match):
            add(["touchpoints", i, "match"], "needs at least one non-empty condition")
    for i, persona in enumerate(journey.personas):
        if not persona.when.traits and not persona.when.behaviour:
            add(["personas", i, "when"], "needs traits or behaviour: an empty rule matches everyone")
        for j, rule in enumerate(persona.when.behaviour):
            if rule.at_most is not None and rule.at_most < rule.at_least:
                add(["personas", i, "when", "behaviour", j, "at_most"], "is below at_least")
            if rule.did.is_empty():
                add(["personas", i, "when", "behaviour", j, "did"], "an empty condition matches every event")
    return problems


def unknown_event_names(
    journey: Journey, known: Iterable[str], node: Any = None, source: str = "<journey>"
) -> list[Problem]:
    """Warnings for event names the journey uses that never occur in the data, with the closest
    name that does (``Order Complete`` → ``Order Completed``)."""
    known = sorted(set(known))
    problems: list[Problem] = []
    for path, condition in _conditions(journey):
        for pattern in _as_list(condition.event):
            if any(ch in pattern for ch in "*?["):
                if not any(_glob_matches(pattern, name) for name in known):
                    problems.append(
                        Problem(
                            source,
                            _line_of(node, [*path, "event"]),
                            _dotted([*path, "event"]),
                            f"the pattern {pattern!r} matches no event in the data",
                            severity="warning",
                        )
                    )
                continue
            if pattern not in known:
                close = difflib.get_close_matches(pattern, known, n=1, cutoff=0.6)
                problems.append(
                    Problem(
                        source,
                        _line_of(node, [*path, "event"]),
                        _dotted([*path, "event"]),
                        f"no event named {pattern!r} in the data",
                        close[0] if close else None,
                        "warning",
                    )
                )
    return problems


def journey_node(text: str) -> Any:
    return yaml.compose(text, Loader=yaml.SafeLoader)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a journey document, for editors (YAML language server, VS Code)."""
    schema = msgspec.json.schema(Journey)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "percorso journey"
    return schema


def to_yaml(journey: Journey) -> str:
    return yaml.safe_dump(msgspec.to_builtins(journey), sort_keys=False, allow_unicode=True)


# -- helpers ------------------------------------------------------------------------------


def _conditions(journey: Journey) -> Iterable[tuple[list[str | int], Condition]]:
    for i, stage in enumerate(journey.stages):
        for j, condition in enumerate(stage.enter.any):
            yield ["stages", i, "enter", "any", j], condition
    for i, touchpoint in enumerate(journey.touchpoints):
        for j, condition in enumerate(touchpoint.match):
            yield ["touchpoints", i, "match", j], condition
    for i, persona in enumerate(journey.personas):
        for j, rule in enumerate(persona.when.behaviour):
            yield ["personas", i, "when", "behaviour", j, "did"], rule.did
    for i, funnel in enumerate(journey.funnels):
        for j, condition in enumerate(funnel.steps):
            yield ["funnels", i, "steps", j], condition
        for j, excluded in enumerate(funnel.exclude):
            yield ["funnels", i, "exclude", j], excluded


def _as_list(value: Patterns | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _glob_matches(pattern: str, value: str) -> bool:
    import fnmatch

    return fnmatch.fnmatchcase(value, pattern)


_PATH_PART = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")


def _split_validation_error(text: str) -> tuple[str, list[str | int]]:
    """msgspec says ``Expected `int`, got `str` - at `$.stages[0].enter.at_least```."""
    message, _, where = text.partition(" - at `")
    path: list[str | int] = []
    for name, index in _PATH_PART.findall(where.rstrip("`")):
        path.append(int(index) if index else name)
    if message.startswith("Invalid enum value") and path and str(path[-1]) in _CHOICES:
        message += f" (expected one of: {', '.join(_CHOICES[str(path[-1])])})"
    message = message.replace("Object missing required field", "missing the required field")
    message = message.replace("Object contains unknown field", "unknown field")
    return message, path


_CHOICES = {
    "progression": ("forward", "loop"),
    "subject": ("contact", "account"),
    "metric": get_args(KpiMetric),
    "severity": ("error", "warning"),
}


def _dotted(path: list[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _line_of(node: Any, path: list[str | int]) -> int | None:
    """The 1-based line of the deepest node along ``path`` in a composed YAML tree."""
    if node is None:
        return None
    line = node.start_mark.line + 1
    for part in path:
        child = None
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            for key, value in node.value:
                if key.value == part:
                    child = value
                    line = key.start_mark.line + 1
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
            line = child.start_mark.line + 1
        if child is None:
            break
        node = child
    return line
