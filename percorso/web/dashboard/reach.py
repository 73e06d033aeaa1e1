"""Reach a saved segment from the dashboard: pick e-mail or an on-site message, write it, go live —
no YAML, no CLI. The page writes the automation document an engineer would have written (kept with
its comments, editable afterwards on the automation's page) and stores it through the same loader
and checks as ``percorso automation apply``.

What it starts: every day at the chosen hour (Rome), everyone in the segment who has not had it
yet gets the message once — the members now at the first moment, and anyone added later. A share of
them (10% by default) is held out, and the goal (by default the last step of the funnel the segment
was lost from) ends the run for whoever reaches it, so the automation's page shows the uplift.
"""

from __future__ import annotations

import json
import logging
import re
from difflib import get_close_matches
from typing import Any

import yaml
from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from percorso.automation.definition import AutomationError, load_automation
from percorso.automation.store import list_automations, save_automation
from percorso.automation.triggers import reference_problems
from percorso.store import Store
from percorso.web.dashboard.filters import PageError
from percorso.web.dashboard.i18n import Translator
from percorso.web.dashboard.render import language, page
from percorso.web.dashboard.twins import Editor, both_on, store_of

log = logging.getLogger("percorso.dashboard")
router = APIRouter(include_in_schema=False)
both = both_on(router)

CHANNELS = ("email", "onsite")
HOLDOUTS = (0, 5, 10, 20)
HOURS = tuple(range(7, 22))
TIMEZONE = "Europe/Rome"
MAX_TEXT = 5_000


def _segment(store: Store, key: str) -> dict[str, Any]:
    with store.session() as s:
        rows = s.rows(
            "SELECT s.name, s.source, (SELECT count(*) FROM segment_members m WHERE m.segment_key = s.segment_key) "
            "FROM segments s WHERE s.segment_key = ?",
            [key],
        )
    if not rows:
        raise PageError(f"there is no saved segment {key!r}", "segment", 404)
    name, source, members = rows[0]
    try:
        steps = json.loads(source or "{}").get("funnel", {}).get("steps") or []
    except (ValueError, AttributeError):
        steps = []
    last = steps[-1] if steps and isinstance(steps[-1], str) else None
    # A funnel step written as a plain event name is a goal as it stands; a pattern is left to the reader.
    goal = last if last and ":" not in last and "*" not in last and "&" not in last else ""
    return {"key": key, "name": str(name), "members": int(members), "goal": goal}


def _defaults(segment: dict[str, Any], t: Translator) -> dict[str, Any]:
    return {
        "name": t("reach.default_name", segment=segment["name"]),
        "channel": "email",
        "subject": "",
        "message": "",
        "cta_text": "",
        "cta_url": "",
        "hour": 10,
        "holdout": 10,
        "goal": segment["goal"],
    }


def _key(store: Store, name: str) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:50] or "reach"
    if not base[0].isalpha():
        base = "reach-" + base
    taken = {str(a["key"]) for a in list_automations(store)}
    key, n = base, 2
    while key in taken:
        key, n = f"{base}-{n}", n + 1
    return key


def document(key: str, form: dict[str, Any], segment: dict[str, Any], author: str, t: Translator) -> str:
    """The automation as YAML, with comments that say where it came from and what it does."""
    steps: list[dict[str, Any]] = []
    if form["holdout"]:
        steps.append({"id": "control", "holdout": form["holdout"]})
    if form["channel"] == "email":
        unsubscribe = t("reach.unsubscribe_line")
        steps.append(
            {
                "id": "message",
                "email": {
                    "subject": form["subject"],
                    "text": form["message"].rstrip() + "\n\n" + unsubscribe + " {{ unsubscribe_url }}\n",
                },
            }
        )
    else:
        onsite: dict[str, Any] = {"title": form["subject"], "body": form["message"]}
        if form["cta_text"] and form["cta_url"]:
            onsite |= {"cta_text": form["cta_text"], "cta_url": form["cta_url"]}
        steps.append({"id": "message", "onsite": onsite})
    data: dict[str, Any] = {
        "key": key,
        "name": form["name"],
        "trigger": {"schedule": {"every": "day", "at": f"{form['hour']:02d}:00", "timezone": TIMEZONE}},
        "audience": {"segments": [segment["key"]]},
        "reentry": "never",
    }
    if form["goal"]:
        data["goal"] = {"event": form["goal"]}
    data["steps"] = steps
    body = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)
    header = (
        f"# Started from the dashboard by {author} to reach the segment “{segment['name']}”.\n"
        f"# Every day at {form['hour']:02d}:00 ({TIMEZONE}) everyone in the segment who has not had it yet\n"
        "# gets the message once; "
        + (
            f"{form['holdout']}% are held out to measure what it adds"
            if form["holdout"]
            else "no one is held out"
        )
        + (f"; reaching “{form['goal']}” ends the run.\n" if form["goal"] else ".\n")
    )
    return header + body


def _form_values(raw: dict[str, str], t: Translator) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """The form's values, checked; problems name the field and say what to do."""
    problems: list[dict[str, str]] = []

    def problem(field: str, key: str, **values: Any) -> None:
        problems.append({"field": field, "message": t(key, **values)})

    form: dict[str, Any] = {k: (raw.get(k) or "").strip() for k in ("name", "channel", "subject", "goal")}
    form["message"] = (raw.get("message") or "").replace("\r\n", "\n").strip()
    form["cta_text"] = (raw.get("cta_text") or "").strip()
    form["cta_url"] = (raw.get("cta_url") or "").strip()
    if not form["name"]:
        problem("name", "reach.need_name")
    if form["channel"] not in CHANNELS:
        problem("channel", "reach.need_channel")
    if not form["subject"]:
        problem("subject", "reach.need_subject" if form["channel"] != "onsite" else "reach.need_title")
    if not form["message"]:
        problem("message", "reach.need_message")
    for field in ("name", "subject", "goal", "cta_text"):
        if len(form[field]) > 200:
            problem(field, "reach.too_long", limit=200)
    if len(form["message"]) > MAX_TEXT:
        problem("message", "reach.too_long", limit=MAX_TEXT)
    if form["cta_url"] and not re.match(r"^https?://", form["cta_url"]):
        problem("cta_url", "reach.need_url")
    for field, allowed in (("hour", HOURS), ("holdout", HOLDOUTS)):
        value = raw.get(field) or ""
        if not value.isdigit() or int(value) not in allowed:
            problem(field, "reach.pick_one")
            form[field] = allowed[0]
        else:
            form[field] = int(value)
    return form, problems


def _on_field(field: str, message: str) -> dict[str, str]:
    """A problem of the generated document, placed on the form field it came from."""
    top = field.split(".")[0].split("[")[0]
    return {"field": top if top in ("name", "goal") else "message", "message": message}


def _goal_problems(store: Store, goal: str, t: Translator) -> list[dict[str, str]]:
    """A goal no event has ever had would never end a run: most likely a typo."""
    if not goal:
        return []
    with store.session() as s:
        if s.rows("SELECT 1 FROM events WHERE event = ? LIMIT 1", [goal]):
            return []
        known = [
            str(r[0]) for r in s.rows("SELECT DISTINCT event FROM events WHERE event IS NOT NULL LIMIT 2000")
        ]
    guess = get_close_matches(goal, known, n=1)
    message = t("reach.unknown_goal", goal=goal)
    if guess:
        message += " " + t("reach.did_you_mean", guess=guess[0])
    return [{"field": "goal", "message": message}]


def _page(
    request: Request,
    segment: dict[str, Any],
    form: dict[str, Any],
    problems: list[dict[str, str]],
    status: int = 200,
) -> Response:
    data = {
        "segment": segment,
        "form": form,
        "problems": problems,
        "choices": {"channels": CHANNELS, "hours": HOURS, "holdouts": HOLDOUTS, "timezone": TIMEZONE},
    }
    return page(request, "reach.html", data, status=status, active="automations")


@both("/segments/{key}/reach")
def reach_form(request: Request, session: Editor, key: str) -> Response:
    segment = _segment(store_of(request), key)
    return _page(request, segment, _defaults(segment, Translator(language(request))), [])


@router.post("/segments/{key}/reach")
async def reach_start(request: Request, session: Editor, key: str) -> Response:
    store = store_of(request)
    segment = _segment(store, key)
    t = Translator(language(request))
    raw = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    form, problems = _form_values(raw, t)
    problems += _goal_problems(store, form["goal"], t)
    if problems:
        return _page(request, segment, form, problems, status=422)
    automation_key = _key(store, form["name"])
    text = document(automation_key, form, segment, session.user.email, t)
    try:
        automation = load_automation(text, "dashboard")
    except AutomationError as exc:  # e.g. a template error in the message: said on the field
        return _page(
            request, segment, form, [_on_field(p.field, p.message) for p in exc.problems], status=422
        )
    unknown = reference_problems(store, automation, "dashboard")
    if unknown:
        return _page(
            request, segment, form, [{"field": "", "message": p.message} for p in unknown], status=422
        )
    save_automation(store, automation, f"dashboard:{session.user.email}", document=text)
    log.info("automation %s started for segment %s by %s", automation_key, key, session.user.email)
    return RedirectResponse(f"/automations/{automation_key}?started=1", status_code=303)
