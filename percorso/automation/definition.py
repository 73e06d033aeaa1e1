"""Automation definitions: a trigger, a goal and a graph of steps, as a declarative document.

An automation is YAML on disk (versioned in git) or JSON over the API. :func:`load_automation`
parses it and reports every problem with the file, line and field — unknown step types, branches
to steps that do not exist, unreachable steps, cycles that never wait, template errors. The
structs double as the published JSON Schema (:func:`json_schema`).

Example::

    key: registration-reminder
    name: {en: Confirm your registration, it: Conferma la registrazione}
    trigger: {event: Signed Up}
    goal: {event: Registration Confirmed}
    steps:
      - {id: pause, wait: 4h}
      - id: reminder
        email: {subject: "One click left, {{ traits.first_name }}", text: "..."}
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import yaml

from percorso.journey.definition import (
    KEY_PATTERN,
    Condition,
    Duration,
    Key,
    Name,
    Patterns,
    PersonaRule,
    Problem,
    _dotted,
    _line_of,
    read_document,
    type_problem,
)

STEP_ID_PATTERN = r"^[a-z][a-z0-9_-]{0,62}$"
StepId = Annotated[str, msgspec.Meta(pattern=STEP_ID_PATTERN, description="lower-case step identifier")]
EXIT = "exit"  # a branch target that ends the contact's run
Percent = Annotated[float, msgspec.Meta(gt=0, le=100)]
ClockTime = Annotated[str, msgspec.Meta(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", description="HH:MM")]


class WaitUntil(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Until a date held in a trait (ISO 8601), optionally shifted: ``{trait: renews_at, before: 3d}``."""

    trait: str
    before: Duration | None = None
    after: Duration | None = None


class WaitFor(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Until an event matching ``event`` arrives, or ``timeout`` passes; two branches."""

    event: Condition
    timeout: Duration
    then: StepId | None = None  # when the event arrived (default: the next step)
    timed_out: StepId | None = None  # when the timeout passed (default: the next step)


class Branch(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    name: Key
    percent: Percent
    next: StepId


class Email(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """An email rendered from Jinja2 templates (sandboxed) with ``contact``, ``traits``, ``events``,
    ``automation``, ``unsubscribe_url`` and ``now``."""

    subject: str
    text: str
    html: str | None = None
    #: Marketing emails honour unsubscribes, consent and frequency caps; transactional ones only consent.
    category: Literal["marketing", "transactional"] = "marketing"
    track: bool = True  # open pixel and click redirects


class Webhook(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    url: Annotated[str, msgspec.Meta(pattern=r"^https?://")]
    #: Name of the environment variable holding the HMAC secret (never the secret itself).
    secret_env: str | None = None
    data: dict[str, Any] = {}


class OnSite(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A message the browser tracker shows on the contact's next page view."""

    title: str
    body: str
    cta_text: str | None = None
    cta_url: str | None = None
    expires: Duration = "7d"


class MoveStage(msgspec.Struct, forbid_unknown_fields=True):
    journey: Key
    stage: Key


class Emit(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    event: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    properties: dict[str, Any] = {}


class Step(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One node of the automation. Exactly one of the kind fields is set; ``next`` (default: the
    following step in the list, or the end) says where a non-branching step continues."""

    id: StepId
    wait: Duration | None = None
    wait_until: WaitUntil | None = None
    wait_for: WaitFor | None = None
    condition: PersonaRule | None = None
    then: StepId | None = None  # condition true
    otherwise: StepId | None = None  # condition false
    split: list[Branch] | None = None
    holdout: Percent | None = None
    email: Email | None = None
    webhook: Webhook | None = None
    onsite: OnSite | None = None
    set_traits: dict[str, Any] | None = None
    unset_traits: list[str] | None = None
    tag: str | None = None
    move_stage: MoveStage | None = None
    emit: Emit | None = None
    exit: bool | None = None
    next: StepId | None = None
    name: Name | str | None = None

    @property
    def kind(self) -> str:
        kinds = [k for k in STEP_KINDS if getattr(self, k) is not None]
        return kinds[0] if len(kinds) == 1 else ""


STEP_KINDS = (
    "wait",
    "wait_until",
    "wait_for",
    "condition",
    "split",
    "holdout",
    "email",
    "webhook",
    "onsite",
    "set_traits",
    "unset_traits",
    "tag",
    "move_stage",
    "emit",
    "exit",
)
ACTION_KINDS = ("email", "webhook", "onsite", "set_traits", "unset_traits", "tag", "move_stage", "emit")
WAIT_KINDS = ("wait", "wait_until", "wait_for")


class StageTrigger(msgspec.Struct, forbid_unknown_fields=True):
    """Each time a contact enters ``stage`` of ``journey`` (its stage history, see stages.py)."""

    journey: Key
    stage: Key


class PersonaTrigger(msgspec.Struct, forbid_unknown_fields=True):
    """When a contact starts matching ``persona`` of ``journey`` (again after leaving it)."""

    journey: Key
    persona: Key


class DateTrigger(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """At a moment read from a trait holding an ISO 8601 date: ``{trait: registered_at, after: 3d,
    at: "09:00"}`` is three days after registering, at 09:00 in ``timezone``."""

    trait: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    before: Duration | None = None
    after: Duration | None = None
    at: ClockTime | None = None  # moved to this time of day (in ``timezone``) on the moment's day
    timezone: str = "Europe/Rome"


class Schedule(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A repeating moment: ``{every: week, day: monday, at: "09:00", timezone: Europe/Rome}``; at each
    one, everyone matching the automation's ``audience`` is enrolled. (``day``, not ``on``: YAML
    reads a bare ``on`` as true.)"""

    every: Literal["day", "week", "month"]
    at: ClockTime = "09:00"
    #: week: a day name (monday … sunday, or mon … sun); month: a day of the month, 1-31 (the
    #: last day of shorter months); day: not given.
    day: str | int | None = None
    timezone: str = "Europe/Rome"


TRIGGER_KINDS = ("event", "stage", "persona", "date", "schedule")


class Trigger(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """What enrolls a contact: an event (``event``/``page``/``properties`` … as in journeys), a stage
    entered, a persona started matching, a date in a trait, a schedule over the audience, or only
    explicit API calls (``api: true``)."""

    event: Patterns | None = None
    type: Patterns | None = None
    page: Patterns | None = None
    name: Patterns | None = None
    channel: Patterns | None = None
    properties: dict[str, Any] | None = None
    stage: StageTrigger | None = None
    persona: PersonaTrigger | None = None
    date: DateTrigger | None = None
    schedule: Schedule | None = None
    api: bool = False

    def condition(self) -> Condition | None:
        fields = {f: getattr(self, f) for f in ("event", "type", "page", "name", "channel", "properties")}
        if all(v is None for v in fields.values()):
            return None
        return Condition(**fields)

    @property
    def kinds(self) -> list[str]:
        """Which of :data:`TRIGGER_KINDS` are given (a valid trigger has at most one)."""
        return [
            k for k in TRIGGER_KINDS if (self.condition() if k == "event" else getattr(self, k)) is not None
        ]


class Cooldown(msgspec.Struct, forbid_unknown_fields=True):
    cooldown: Duration


class Cap(msgspec.Struct, forbid_unknown_fields=True):
    """At most ``max`` messages of a channel per contact within ``per`` (across all automations)."""

    max: Annotated[int, msgspec.Meta(ge=1, le=1000)]
    per: Duration


class QuietHours(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Messages due inside the window are held until it ends, in the contact's time zone (the
    ``timezone`` trait, an IANA name such as Europe/Rome), else ``default_timezone``."""

    start: ClockTime
    end: ClockTime
    default_timezone: str = "Europe/Rome"
    timezone_trait: str = "timezone"


class Automation(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    key: Key
    name: Name | str
    trigger: Trigger
    steps: Annotated[list[Step], msgspec.Meta(min_length=1, max_length=200)]
    goal: Condition | None = None
    #: never: once per contact; after_exit: again once the previous run ended; {cooldown: 30d}.
    reentry: Literal["never", "after_exit"] | Cooldown = "never"
    #: Only contacts matching this rule (traits, behaviour) are enrolled.
    audience: PersonaRule | None = None
    caps: dict[Literal["email", "onsite", "webhook"], Cap] = {}
    quiet_hours: QuietHours | None = None
    description: str | None = None

    def step_index(self) -> dict[str, int]:
        return {step.id: i for i, step in enumerate(self.steps)}

    def step(self, step_id: str) -> Step:
        return self.steps[self.step_index()[step_id]]

    def digest(self) -> str:
        return hashlib.sha256(msgspec.json.encode(self)).hexdigest()[:16]


class AutomationError(ValueError):
    """The document is not a valid automation; ``problems`` lists every error found."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(map(str, problems)))


@dataclass(frozen=True)
class Edge:
    target: str  # a step id or EXIT
    label: str  # "next", "then", "timed_out", "otherwise", a split branch name


def successors(automation: Automation, position: int) -> list[Edge]:
    """Where the step at ``position`` can lead (the graph the engine walks and the UI draws)."""
    steps = automation.steps
    step = steps[position]
    following = steps[position + 1].id if position + 1 < len(steps) else EXIT
    default = step.next or following
    kind = step.kind
    if kind == "exit":
        return []
    if kind == "wait_for" and step.wait_for is not None:
        return [
            Edge(step.wait_for.then or default, "then"),
            Edge(step.wait_for.timed_out or default, "timed_out"),
        ]
    if kind == "condition":
        return [Edge(step.then or default, "then"), Edge(step.otherwise or default, "otherwise")]
    if kind == "split" and step.split is not None:
        return [Edge(b.next, b.name) for b in step.split]
    return [Edge(default, "next")]


# -- loading ------------------------------------------------------------------------------


def load_automation(text: str, source: str = "<automation>") -> Automation:
    """Parses and validates a YAML (or JSON) automation document."""
    data, node = read_document(text, source, AutomationError)
    return automation_from_data(data, node, source)


def automation_from_data(
    data: Any, node: Any = None, source: str = "<automation>", *, stored: bool = False
) -> Automation:
    """Validates a parsed document. ``stored``: a definition saved earlier, checked as when it
    was saved; what later versions refuse at save time is refused when it runs instead."""
    if not isinstance(data, dict):
        raise AutomationError(
            [Problem(source, 1, "", "an automation is a mapping with key, name, trigger and steps")]
        )
    problems = _kind_problems(data, node, source)
    if problems:
        raise AutomationError(problems)
    try:
        automation = msgspec.convert(data, Automation, strict=True)
    except msgspec.ValidationError as exc:
        message, path, line = type_problem(exc, node)
        if message.startswith("Object contains unknown field") and len(path) == 2 and path[0] == "steps":
            message += f" (a step is one of: {', '.join(STEP_KINDS)}, with id, next and name)"
        if message.startswith("Invalid enum value") and path[-1:] == ["every"]:
            message += " (expected one of: day, week, month)"
        raise AutomationError([Problem(source, line, _dotted(path), message)]) from None
    problems = semantic_problems(automation, node, source, stored=stored)
    if problems:
        raise AutomationError(problems)
    return automation


def load_automation_file(path: Path | str) -> Automation:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AutomationError([Problem(str(path), None, "", f"cannot read the file: {exc}")]) from None
    return load_automation(text, str(path))


def _kind_problems(data: dict[str, Any], node: Any, source: str) -> list[Problem]:
    """Each step has exactly one kind: said before the type check so the message is precise."""
    problems: list[Problem] = []
    steps = data.get("steps")
    if not isinstance(steps, list):
        return problems
    extras = {"id", "next", "name", "then", "otherwise"}
    for i, raw in enumerate(steps):
        if not isinstance(raw, dict):
            continue
        kinds = [k for k in raw if k in STEP_KINDS]
        unknown = [k for k in raw if k not in STEP_KINDS and k not in extras]
        path: list[str | int] = ["steps", i]
        if unknown:
            from difflib import get_close_matches

            guess = get_close_matches(str(unknown[0]), STEP_KINDS, n=1)
            problems.append(
                Problem(
                    source,
                    _line_of(node, [*path, str(unknown[0])]),
                    _dotted([*path, str(unknown[0])]),
                    f"unknown step type {unknown[0]!r} (a step is one of: {', '.join(STEP_KINDS)})",
                    guess[0] if guess else None,
                )
            )
        elif len(kinds) != 1:
            what = "has no kind" if not kinds else f"has several kinds ({', '.join(kinds)})"
            problems.append(
                Problem(
                    source,
                    _line_of(node, path),
                    _dotted(path),
                    f"the step {what}: give exactly one of {', '.join(STEP_KINDS)}",
                )
            )
    return problems


def semantic_problems(
    automation: Automation, node: Any = None, source: str = "<automation>", *, stored: bool = False
) -> list[Problem]:
    """What the types cannot say: unique ids, known targets, reachable steps, no cycle without a
    wait, split percentages, valid templates (tried within the render budget unless ``stored``),
    webhook secrets from allowed variables, and time zones."""
    from percorso.automation.actions.email import template_problems
    from percorso.automation.actions.webhook import secret_env_problem

    problems: list[Problem] = []

    def add(path: list[str | int], message: str, suggestion: str | None = None) -> None:
        problems.append(Problem(source, _line_of(node, path), _dotted(path), message, suggestion))

    index: dict[str, int] = {}
    for i, step in enumerate(automation.steps):
        if step.id == EXIT:
            add(["steps", i, "id"], "'exit' is reserved for ending a run; choose another id")
        elif step.id in index:
            add(["steps", i, "id"], f"the id {step.id!r} is already used by step {index[step.id] + 1}")
        else:
            index[step.id] = i
    if problems:
        return problems
    known = [*index, EXIT]
    graph: dict[int, list[int]] = {}
    for i, step in enumerate(automation.steps):
        targets = []
        for edge in successors(automation, i):
            if edge.target == EXIT:
                continue
            if edge.target not in index:
                from difflib import get_close_matches

                guess = get_close_matches(edge.target, known, n=1)
                add(
                    ["steps", i],
                    f"step {step.id!r} leads to {edge.target!r}, which is not a step "
                    f"(steps: {', '.join(index)}; or 'exit')",
                    guess[0] if guess else None,
                )
            else:
                targets.append(index[edge.target])
        graph[i] = targets
        if step.split is not None:
            total = sum(b.percent for b in step.split)
            if abs(total - 100) > 1e-9:
                add(["steps", i, "split"], f"the branch percentages add up to {total:g}, not 100")
            names = [b.name for b in step.split]
            if len(set(names)) != len(names):
                add(["steps", i, "split"], "branch names must be unique")
            if len(step.split) < 2:
                add(["steps", i, "split"], "a split needs at least two branches")
        if step.holdout is not None and step.holdout >= 100:
            add(["steps", i, "holdout"], "a holdout of 100% leaves nobody to receive the automation")
        if step.email is not None:
            email = step.email
            for part, message in template_problems(email.subject, email.text, email.html, trial=not stored):
                add(["steps", i, "email", part], f"{part}: {message}")
        if step.webhook is not None and step.webhook.secret_env is not None and not stored:
            problem = secret_env_problem(step.webhook.secret_env)
            if problem:
                add(["steps", i, "webhook", "secret_env"], problem)
        if step.wait_until is not None and step.wait_until.before and step.wait_until.after:
            add(["steps", i, "wait_until"], "give before or after, not both")
        if (step.then or step.otherwise) and step.kind != "condition":
            add(["steps", i], "then/otherwise belong to a condition step (a wait_for has its own)")
    if problems:
        return problems
    # Reachability from the first step.
    seen = {0}
    todo = [0]
    while todo:
        for j in graph[todo.pop()]:
            if j not in seen:
                seen.add(j)
                todo.append(j)
    for i, step in enumerate(automation.steps):
        if i not in seen:
            add(["steps", i], f"step {step.id!r} can never be reached from the first step")
    # A cycle must pass through a wait, or a contact would loop forever in one instant.
    instant = {i for i, s in enumerate(automation.steps) if s.kind not in WAIT_KINDS}
    for start in sorted(instant):
        path = _instant_cycle(start, graph, instant)
        if path:
            ids = " → ".join(automation.steps[k].id for k in [*path, path[0]])
            add(["steps", start], f"the steps loop without a wait ({ids}); add a wait step to the loop")
            break
    if automation.quiet_hours is not None:
        try:
            from zoneinfo import ZoneInfo

            ZoneInfo(automation.quiet_hours.default_timezone)
        except (KeyError, ValueError, OSError):
            add(
                ["quiet_hours", "default_timezone"],
                f"{automation.quiet_hours.default_timezone!r} is not a time zone (e.g. Europe/Rome)",
            )
        if automation.quiet_hours.start == automation.quiet_hours.end:
            add(["quiet_hours"], "start and end are the same time")
    problems += trigger_problems(automation, node, source)
    if automation.goal is not None and automation.goal.is_empty():
        add(["goal"], "an empty goal would match every event")
    return problems


WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def weekday_number(value: str | int | None) -> int | None:
    """0 for monday … 6 for sunday (full English names or their first three letters), else None."""
    if not isinstance(value, str):
        return None
    name = value.strip().lower()
    for number, day in enumerate(WEEKDAYS):
        if name in (day, day[:3]):
            return number
    return None


def trigger_problems(automation: Automation, node: Any = None, source: str = "<automation>") -> list[Problem]:
    """One kind of trigger, and each kind's fields consistent (days, time zones, an audience)."""
    problems: list[Problem] = []

    def add(path: list[str | int], message: str, suggestion: str | None = None) -> None:
        problems.append(Problem(source, _line_of(node, path), _dotted(path), message, suggestion))

    trigger = automation.trigger
    kinds = trigger.kinds
    if not kinds and not trigger.api:
        add(
            ["trigger"],
            "say what enrolls a contact: an event/page condition, stage, persona, date, schedule, or api: true",
        )
    elif len(kinds) > 1:
        add(["trigger"], f"give one kind of trigger, not {' and '.join(kinds)} together")
    if trigger.date is not None:
        if trigger.date.before and trigger.date.after:
            add(["trigger", "date"], "give before or after, not both")
        _zone_problem(add, ["trigger", "date", "timezone"], trigger.date.timezone)
    schedule = trigger.schedule
    if schedule is not None:
        _zone_problem(add, ["trigger", "schedule", "timezone"], schedule.timezone)
        where: list[str | int] = ["trigger", "schedule", "day"]
        day = schedule.day
        if schedule.every == "day" and day is not None:
            add(where, "a daily schedule runs every day: remove day")
        elif schedule.every == "week" and weekday_number(day) is None:
            from difflib import get_close_matches

            guess = get_close_matches(str(day).lower(), WEEKDAYS, n=1) if day is not None else []
            said = "is missing" if day is None else f"is {day!r}, not a day of the week"
            add(where, f"{said}: say which day, e.g. day: monday", guess[0] if guess else None)
        elif schedule.every == "month" and day is not None and (isinstance(day, str) or not 1 <= day <= 31):
            add(where, f"{day!r} is not a day of the month: give 1 to 31 (31: the last day)")
        if automation.audience is None:
            add(
                ["trigger", "schedule"],
                "a schedule enrolls everyone matching the audience: add audience (traits, behaviour), "
                "or audience: {} to mean every contact",
            )
    return problems


def _zone_problem(add: Any, path: list[str | int], name: str) -> None:
    try:
        from zoneinfo import ZoneInfo

        ZoneInfo(name)
    except (KeyError, ValueError, OSError):
        add(path, f"{name!r} is not a time zone (e.g. Europe/Rome, UTC)")


def _instant_cycle(start: int, graph: dict[int, list[int]], instant: set[int]) -> list[int] | None:
    """A path from ``start`` back to itself through instant (non-waiting) steps only."""
    stack: list[tuple[int, list[int]]] = [(start, [start])]
    visited: set[int] = set()
    while stack:
        node, path = stack.pop()
        for nxt in graph.get(node, []):
            if nxt == start:
                return path
            if nxt in instant and nxt not in visited:
                visited.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


def json_schema() -> dict[str, Any]:
    """The JSON Schema editors use to complete and check automation files."""
    schema = msgspec.json.schema(Automation)
    schema["$id"] = "https://percorso.dev/schema/automation.json"
    schema["title"] = "percorso automation"
    return schema


def to_yaml(automation: Automation) -> str:
    return yaml.safe_dump(msgspec.to_builtins(automation), sort_keys=False, allow_unicode=True)


__all__ = [
    "ACTION_KINDS",
    "EXIT",
    "KEY_PATTERN",
    "Automation",
    "AutomationError",
    "Edge",
    "Step",
    "load_automation",
    "load_automation_file",
    "successors",
]


def example_files() -> list[Path]:
    """The example automations shipped with percorso (YAML files, by name)."""
    from importlib import resources

    folder = resources.files("percorso.automation") / "examples"
    return sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith(".yaml"))
