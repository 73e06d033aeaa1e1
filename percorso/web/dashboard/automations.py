"""Dashboard pages: automations — the list, each one's step graph and numbers, pause/resume and
its YAML, editable by editors and checked by the same loader as ``PUT /v1/automations/{key}``."""

from __future__ import annotations

import logging
import re
from typing import Annotated, Any

import msgspec
import yaml
from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from percorso.automation.definition import Automation, AutomationError, load_automation
from percorso.automation.graph import step_graph
from percorso.automation.stats import automation_stats
from percorso.automation.store import (
    AutomationNotFound,
    automation_document,
    get_automation,
    list_automations,
    save_automation,
)
from percorso.automation.store import set_status as store_set_status
from percorso.journey.definition import display
from percorso.web.dashboard.filters import PageError
from percorso.web.dashboard.i18n import Translator
from percorso.web.dashboard.render import language, page
from percorso.web.dashboard.twins import Editor, Viewer, both_on, store_of

log = logging.getLogger("percorso.dashboard")
router = APIRouter(include_in_schema=False)
both = both_on(router)

KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")  # as the REST API's path parameter
MAX_SOURCE = 200_000
NOTICES = ("saved", "unchanged", "paused", "active", "started")


class _Dumper(yaml.SafeDumper):
    """Multi-line text (e-mail bodies, HTML) as ``|`` blocks, the way people write it by hand."""


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _text)


def _number(dumper: yaml.SafeDumper, value: float) -> yaml.ScalarNode:
    # msgspec gives a percentage or a duration as a float: 10.0 reads back as 10, as written
    if value.is_integer():
        return dumper.represent_int(int(value))
    return dumper.represent_float(value)


_Dumper.add_representer(float, _number)


def definition_yaml(definition: msgspec.Struct) -> str:
    """A stored definition (automation, survey) as YAML to edit, for a version stored without its
    document (one sent as JSON, or from before documents were kept)."""
    data = msgspec.to_builtins(definition)
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)


def automation_name(name: Any, lang: str) -> str:
    """An automation's name from its stored definition (``{en, it}`` or one string)."""
    if isinstance(name, dict):
        return str((name.get("it") if lang == "it" else None) or name.get("en") or "")
    return str(name)


def _not_found(key: str) -> PageError:
    return PageError(f"there is no automation {key!r}", "key", 404)


@both("/automations")
def automations_page(request: Request, session: Viewer) -> Response:
    lang = language(request)
    rows = [{**a, "name": automation_name(a["name"], lang)} for a in list_automations(store_of(request))]
    return page(request, "automations.html", {"automations": rows}, active="automations")


@both("/experiments")
def experiments_page(request: Request, session: Viewer) -> Response:
    """Every A/B test running in an automation (a split step with a goal): its arms, the leading
    arm and the verdict, linking to the automation's page for the whole result."""
    from percorso.experiments.automation import automation_experiment

    lang = language(request)
    store = store_of(request)
    rows = []
    for a in list_automations(store):
        automation, _, _ = get_automation(store, a["key"])
        if automation.goal is None:
            continue
        for step in automation.steps:
            if not step.split:
                continue
            result = automation_experiment(store, a["key"], step.id)
            leader = max(result["arms"], key=lambda arm: arm["probability_best"])
            rows.append(
                {
                    "automation": a["key"],
                    "name": automation_name(a["name"], lang),
                    "status": a["status"],
                    "step": step.id,
                    "goal": result["goal"],
                    "arms": result["arms"],
                    "control": result["control"],
                    "leader": leader["name"],
                    "people": sum(arm["exposed"] for arm in result["arms"]),
                    "verdict": result["verdict"][lang],
                    "sample_ratio_mismatch": result["sample_ratio"]["mismatch"],
                }
            )
    return page(request, "experiments.html", {"experiments": rows}, active="experiments")


def graph_for_chart(automation: Automation, stats: dict[str, Any], t: Translator) -> dict[str, Any]:
    """The step graph with the text each node and edge shows, in the reader's language."""
    graph = step_graph(automation, stats["steps"])
    names = {s.id: display(s.name, t.lang) for s in automation.steps if s.name}
    for node in graph["nodes"]:
        if node["group"] == "end":
            node["text"] = t("automation.end")
            continue
        title = names.get(node["id"]) or node["id"]
        node["text"] = (
            f"{title}\n{t('step.' + node['kind'])} · {t('automation.entered_n', n=t.num(node['entered']))}"
        )
        if node["goal"]:
            node["text"] += "\n" + t("automation.goal_n", n=t.num(node["goal"]))
    for link in graph["links"]:
        share = f" ({t.pct(link['share'], 0)})" if link["share"] is not None else ""
        label = "" if link["label"] == "next" else _edge_label(link["label"], t) + ": "
        link["text"] = f"{label}{t.num(link['count'])}{share}"
    return graph


def _edge_label(label: str, t: Translator) -> str:
    key = "edge." + label
    text = t(key)
    return label if text == key else text


def _experiment(store: Any, automation: Any, key: str) -> dict[str, Any] | None:
    """The split step read as an A/B test, when the automation has a split and a goal."""
    from percorso.experiments.automation import automation_experiment

    if automation.goal is None or not any(st.split for st in automation.steps):
        return None
    return automation_experiment(store, key)


def _detail(request: Request, key: str) -> dict[str, Any]:
    if not KEY.match(key):
        raise _not_found(key)
    store = store_of(request)
    lang = language(request)
    try:
        automation, version, status = get_automation(store, key)
        stats = automation_stats(store, key)
    except AutomationNotFound:
        raise _not_found(key) from None
    notice = next((n for n in NOTICES if n in request.query_params), None)
    steps = [
        {**s, "name": display(automation.step(s["id"]).name, lang) if s["name"] else None}  # type: ignore[arg-type]
        for s in stats["steps"]
    ]
    return {
        "key": key,
        "name": display(automation.name, lang),
        "description": automation.description,
        "version": version,
        "status": status,
        "has_goal": automation.goal is not None,
        "holdout_share": next((st.holdout for st in automation.steps if st.holdout is not None), None),
        "totals": stats["totals"],
        "steps": steps,
        "groups": stats["groups"],
        "uplift": stats["uplift"],
        "experiment": _experiment(store, automation, key),
        "failures": stats["failures"],
        "graph": graph_for_chart(automation, stats, Translator(lang)),
        "source": automation_document(store, key, version) or definition_yaml(automation),
        "problems": [],
        "problem_lines": [],
        "notice": {"kind": notice, "version": request.query_params.get(notice) or None} if notice else None,
    }


@both("/automations/{key}")
def automation_page(request: Request, session: Viewer, key: str) -> Response:
    return page(request, "automation.html", _detail(request, key), active="automations")


def key_line(text: str) -> int | None:
    match = re.search(r"^key\s*:", text, re.MULTILINE)
    return text.count("\n", 0, match.start()) + 1 if match else None


@router.post("/automations/{key}/definition")
def save_definition(
    request: Request, session: Editor, key: str, definition: Annotated[str, Form()] = ""
) -> Response:
    if not KEY.match(key):
        raise _not_found(key)
    try:
        get_automation(store_of(request), key)
    except AutomationNotFound:
        raise _not_found(key) from None
    text = definition.replace("\r\n", "\n")  # browsers send a textarea's lines with CRLF
    problems: list[dict[str, Any]] = []
    automation: Automation | None = None
    if len(text) > MAX_SOURCE:
        problems.append(
            {"line": None, "field": "", "message": f"the definition is longer than {MAX_SOURCE} characters"}
        )
    else:
        try:
            automation = load_automation(text, "definition")
        except AutomationError as exc:
            problems = [p.as_dict() for p in exc.problems]
        else:
            if automation.key != key:
                problems.append(
                    {
                        "line": key_line(text),
                        "field": "key",
                        "message": f"the document's key is {automation.key!r}, this automation is {key!r}; "
                        "to make a new automation, apply a new file with `percorso automation apply`",
                    }
                )
    if problems or automation is None:
        data = _detail(request, key)
        data["source"] = text
        data["problems"] = problems
        data["problem_lines"] = sorted({p["line"] for p in problems if p.get("line")})
        data["notice"] = None
        return page(request, "automation.html", data, status=422, active="automations")
    saved = save_automation(store_of(request), automation, f"dashboard:{session.user.email}", document=text)
    log.info("automation %s saved as version %s by %s", key, saved["version"], session.user.email)
    target = (
        f"/automations/{key}?saved={saved['version']}"
        if saved["changed"]
        else f"/automations/{key}?unchanged=1"
    )
    return RedirectResponse(target + "#definition", status_code=303)


def _set_status(request: Request, key: str, status: str, back: str) -> Response:
    if not KEY.match(key):
        raise _not_found(key)
    store = store_of(request)
    try:
        store_set_status(store, key, status)
    except AutomationNotFound:
        raise _not_found(key) from None
    if status == "active":
        store.events_arrived.set()  # overdue waits and held messages run at once, as over REST
    return RedirectResponse(
        "/automations" if back == "list" else f"/automations/{key}?{status}=1", status_code=303
    )


@router.post("/automations/{key}/pause")
def pause(request: Request, session: Editor, key: str, back: Annotated[str, Form()] = "") -> Response:
    log.info("automation %s paused by %s", key, session.user.email)
    return _set_status(request, key, "paused", back)


@router.post("/automations/{key}/resume")
def resume(request: Request, session: Editor, key: str, back: Annotated[str, Form()] = "") -> Response:
    log.info("automation %s resumed by %s", key, session.user.email)
    return _set_status(request, key, "active", back)
