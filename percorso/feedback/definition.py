"""Survey definitions: the questions (NPS, CSAT, CES, a choice, an open answer), where and to whom
they are shown, and how often, as a declarative document validated with precise errors.

Example::

    key: nps-after-purchase
    name: {en: "Recommend us?", it: "Ci consiglieresti?"}
    stage: purchase              # the journey stage the answers describe (map, pain points)
    questions:
      - id: score
        kind: nps
        text: {en: "How likely are you to recommend Casa Aurora to a friend?",
               it: "Quanto è probabile che consiglieresti Casa Aurora a un amico?"}
      - id: why
        kind: open
        text: {en: "What is the main reason for your score?", it: "Qual è il motivo principale del tuo voto?"}
    target: {pages: ["/order/complete*"], sample: 50}
    show: {every: 90d, delay: 5, stop_after: 1000}
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from percorso.journey.definition import (
    Duration,
    Key,
    Name,
    Problem,
    _dotted,
    _line_of,
    read_document,
    type_problem,
)

QuestionId = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,62}$", description="lower-case id")]
SegmentKey = Annotated[
    str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$", description="a saved segment")
]
Percent = Annotated[float, msgspec.Meta(gt=0, le=100)]

#: The scored kinds and their scales: (lowest, highest).
SCALES = {"nps": (0, 10), "csat": (1, 5), "ces": (1, 7)}
KINDS = (*SCALES, "choice", "open")
MAX_OPEN_ANSWER = 2000


class Question(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """``nps`` 0-10, ``csat`` 1-5, ``ces`` 1-7, ``choice`` (one of ``options``), ``open`` text."""

    id: QuestionId
    kind: Literal["nps", "csat", "ces", "choice", "open"]
    text: Name | str
    options: list[Name | str] = []
    required: bool = False


class Target(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Who sees it: page patterns (``*`` wildcards), after an event in the visit, devices, a sample
    (checked in the browser); and the audience (checked by the server): the visitor's current
    ``stages`` or ``personas`` in ``journey``, saved ``segments``. Each list given must match one
    of its entries; every list given must match."""

    pages: list[str] = []
    event: str | None = None
    devices: list[Literal["desktop", "mobile", "tablet"]] = []
    sample: Percent = 100.0
    journey: Key | None = None
    stages: list[Key] = []
    personas: list[Key] = []
    segments: list[SegmentKey] = []

    def has_audience(self) -> bool:
        return bool(self.stages or self.personas or self.segments)


class Show(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """How often: once per contact, or again ``every`` period (recurring NPS); after ``delay``;
    never twice in one visit; no more once ``stop_after`` answers arrived."""

    every: Duration | None = None
    delay: Annotated[int, msgspec.Meta(ge=0, le=3600, description="seconds after the page loads")] = 0
    stop_after: Annotated[int, msgspec.Meta(ge=1)] | None = None


class Survey(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    key: Key
    name: Name | str
    questions: list[Question]
    target: Target = msgspec.field(default_factory=Target)
    show: Show = msgspec.field(default_factory=Show)
    stage: str | None = None
    touchpoint: str | None = None

    def scored(self) -> Question | None:
        """The question whose answer is the survey's score (NPS, CSAT or CES), if any."""
        return next((q for q in self.questions if q.kind in SCALES), None)


class SurveyError(ValueError):
    """The document is not a valid survey; ``problems`` lists every error found."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(map(str, problems)))


def load_survey(text: str, source: str = "<survey>") -> Survey:
    """Parses and validates a YAML (or JSON) survey document."""
    data, node = read_document(text, source, SurveyError)
    return survey_from_data(data, node, source)


def survey_from_data(data: Any, node: Any = None, source: str = "<survey>") -> Survey:
    if not isinstance(data, dict):
        raise SurveyError([Problem(source, 1, "", "a survey is a mapping with key, name and questions")])
    try:
        survey = msgspec.convert(data, Survey, strict=True)
    except msgspec.ValidationError as exc:
        message, path, line = type_problem(exc, node)
        if message.startswith("Invalid enum value") and path[-1:] == ["kind"]:
            message += f" (expected one of: {', '.join(KINDS)})"
        if "matching regex '^[1-9]" in message:
            message = f"{data_at(data, path)!r} is not a duration: write 30m, 12h, 14d or 2w"
        raise SurveyError([Problem(source, line, _dotted(path), message)]) from None
    problems = semantic_problems(survey, node, source)
    if problems:
        raise SurveyError(problems)
    return survey


def data_at(data: Any, path: list[Any]) -> Any:
    for part in path:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def load_survey_file(path: Path | str) -> Survey:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SurveyError([Problem(str(path), None, "", f"cannot read the file: {exc}")]) from None
    return load_survey(text, str(path))


def semantic_problems(survey: Survey, node: Any = None, source: str = "<survey>") -> list[Problem]:
    problems: list[Problem] = []

    def add(path: list[str | int], message: str) -> None:
        problems.append(Problem(source, _line_of(node, path), _dotted(path), message))

    if survey.key == "new":
        add(["key"], "'new' is kept for the dashboard's New survey page: choose another key")
    if not survey.questions:
        add(["questions"], "lists no question")
    seen: dict[str, int] = {}
    scored = [i for i, q in enumerate(survey.questions) if q.kind in SCALES]
    for i, question in enumerate(survey.questions):
        if question.id in seen:
            add(
                ["questions", i, "id"], f"{question.id!r} is already the id of questions[{seen[question.id]}]"
            )
        seen.setdefault(question.id, i)
        if question.kind == "choice" and len(question.options) < 2:
            add(["questions", i, "options"], "a choice question needs at least two options")
        if question.kind != "choice" and question.options:
            add(["questions", i, "options"], f"only choice questions have options, not {question.kind}")
    for i in scored[1:]:
        add(
            ["questions", i, "kind"],
            f"a survey has one scored question (nps, csat or ces); questions[{scored[0]}] is already one",
        )
    target = survey.target
    if (target.stages or target.personas) and target.journey is None:
        field = "stages" if target.stages else "personas"
        add(["target", field], f"{field} belong to a journey: name it in target.journey")
    if target.journey is not None and not (target.stages or target.personas):
        add(["target", "journey"], "names a journey but no stages or personas of it to target")
    for i, pattern in enumerate(survey.target.pages):
        if not pattern.startswith("/") and not pattern.startswith("*"):
            add(["target", "pages", i], f"{pattern!r} is not a page path: start it with / (e.g. /checkout/*)")
    return problems


def check_answers(survey: Survey, answers: dict[str, Any]) -> dict[str, Any]:
    """The answers, checked against the questions; :class:`AnswerError` names the question."""
    questions = {q.id: q for q in survey.questions}
    for qid in answers:
        if qid not in questions:
            raise AnswerError(
                qid, f"is not a question of survey {survey.key} (it has {', '.join(questions)})"
            )
    checked: dict[str, Any] = {}
    for qid, question in questions.items():
        value = answers.get(qid)
        if value is None or value == "":
            if question.required:
                raise AnswerError(qid, "is required")
            continue
        if question.kind in SCALES:
            low, high = SCALES[question.kind]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise AnswerError(
                    qid, f"{value!r} is not a {question.kind} score: a whole number from {low} to {high}"
                )
        elif question.kind == "choice":
            choices = [o if isinstance(o, str) else o.en for o in question.options]
            if value not in choices:
                raise AnswerError(qid, f"{str(value)[:60]!r} is not one of the options: {', '.join(choices)}")
        else:
            if not isinstance(value, str):
                raise AnswerError(qid, "an open answer is text")
            if len(value) > MAX_OPEN_ANSWER or "\x00" in value:
                raise AnswerError(qid, f"is over {MAX_OPEN_ANSWER:,} characters or holds a NUL character")
        checked[qid] = value
    if not checked:
        raise AnswerError("answers", "holds no answer")
    return checked


class AnswerError(ValueError):
    def __init__(self, question: str, reason: str):
        super().__init__(f"{question}: {reason}")
        self.question = question
        self.reason = reason


def json_schema() -> dict[str, Any]:
    """The published JSON Schema of survey documents."""
    return msgspec.json.schema(Survey)
