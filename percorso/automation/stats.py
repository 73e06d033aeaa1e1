"""Per-step statistics of an automation, goal conversion by group, and uplift against the holdout."""

from __future__ import annotations

import math
import re
from typing import Any

from percorso.automation.definition import successors
from percorso.automation.store import get_automation
from percorso.journey.definition import display
from percorso.store import Store
from percorso.store.base import Session

Z95 = 1.959963984540054


def automation_stats(store: Store, key: str) -> dict[str, Any]:
    """Entered, waiting, passed each branch, exited by goal, actions sent and failed — per step —
    plus conversion to the goal per group (treatment, holdout, split branches) and the uplift of
    treatment over holdout with a 95% confidence interval (difference of two proportions)."""
    automation, version, status = get_automation(store, key)
    with store.session() as s:
        log_rows = s.rows(
            "SELECT step, outcome, count(*), count(DISTINCT enrollment_id) FROM enrollment_log "
            "WHERE automation_key = ? GROUP BY step, outcome",
            [key],
        )
        # Outcomes at one step are not exclusive (a wait logs "waiting" then "waited"), so the
        # contacts who reached a step are counted distinct, not summed or maxed over outcomes.
        reached = dict(
            s.rows(
                "SELECT step, count(DISTINCT enrollment_id) FROM enrollment_log WHERE automation_key = ? "
                "GROUP BY step",
                [key],
            )
        )
        here = s.rows(
            "SELECT step, status, count(*) FROM enrollments WHERE automation_key = ? AND status IN "
            "('active', 'waiting') GROUP BY step, status",
            [key],
        )
        outbox = s.rows(
            "SELECT step, status, count(*) FROM outbox WHERE automation_key = ? AND category <> 'timeline' "
            "GROUP BY step, status",
            [key],
        )
        totals = s.dicts(
            "SELECT count(*) AS enrolled, "
            "sum(CASE WHEN status IN ('active', 'waiting') THEN 1 ELSE 0 END) AS inside, "
            "sum(CASE WHEN status = 'done' THEN 1 ELSE 0 END) AS completed, "
            "sum(CASE WHEN exit_reason = 'goal' THEN 1 ELSE 0 END) AS exited_by_goal, "
            "sum(CASE WHEN status = 'holdout' THEN 1 ELSE 0 END) AS holdout "
            "FROM enrollments WHERE automation_key = ?",
            [key],
        )[0]
        by_group = goal_groups(s, key)
        # What failed when sent, and what failed before anything could be queued (an email
        # template the render budget stopped, for one): both with the reason.
        failures = s.dicts(
            "SELECT step, last_error, n FROM ("
            "SELECT step, last_error, count(*) AS n FROM outbox WHERE automation_key = ? AND status = 'failed' "
            "AND category <> 'timeline' "
            "GROUP BY step, last_error UNION ALL "
            "SELECT step, detail AS last_error, count(*) AS n FROM enrollment_log "
            "WHERE automation_key = ? AND outcome = 'failed' GROUP BY step, detail"
            ") f ORDER BY n DESC, step, last_error LIMIT 10",
            [key, key],
        )
    outcomes: dict[str, dict[str, int]] = {}
    for step, outcome, _n, distinct in log_rows:
        outcomes.setdefault(step, {})[outcome] = int(distinct)
    waiting: dict[str, int] = {}
    for step, _status, n in here:
        waiting[step] = waiting.get(step, 0) + int(n)
    sends: dict[str, dict[str, int]] = {}
    for step, state, n in outbox:
        sends.setdefault(step, {})[state] = int(n)
    steps = []
    for position, step in enumerate(automation.steps):
        done = outcomes.get(step.id, {})
        steps.append(
            {
                "id": step.id,
                "kind": step.kind,
                "name": display(step.name) if step.name else None,
                "entered": int(reached.get(step.id, 0)),
                "now": waiting.get(step.id, 0),
                "outcomes": done,
                "actions": sends.get(step.id, {}),
                "next": [{"to": e.target, "label": e.label} for e in successors(automation, position)],
            }
        )
    return {
        "key": key,
        "name": display(automation.name),
        "version": version,
        "status": status,
        "goal": automation.goal is not None,
        "totals": {k: int(v or 0) for k, v in totals.items()},
        "steps": steps,
        "groups": by_group,
        "uplift": uplift(by_group),
        "failures": [
            {"step": f["step"], "error": _without_reply(f["last_error"]), "count": int(f["n"])}
            for f in failures
        ],
    }


def goal_groups(s: Session, key: str) -> list[dict[str, Any]]:
    """Goal conversion per group of enrolments (``treatment``, ``holdout``, split branches as
    the engine records them in ``variant``; ``all`` without either)."""
    rows = s.rows(
        "SELECT coalesce(variant, 'all'), count(*), sum(CASE WHEN goal_at IS NOT NULL THEN 1 ELSE 0 END) "
        "FROM enrollments WHERE automation_key = ? GROUP BY coalesce(variant, 'all') ORDER BY 1",
        [key],
    )
    return [
        {
            "group": group,
            "contacts": int(n),
            "converted": int(c or 0),
            "rate": round(int(c or 0) / int(n), 4) if n else None,
        }
        for group, n, c in rows
    ]


def uplift(groups: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Treatment (everyone not held out) versus the holdout: difference in goal conversion with a
    95% Wald interval, and a two-sided z-test p-value. None without a holdout."""
    holdout = next((g for g in groups if g["group"] == "holdout"), None)
    treated = [g for g in groups if g["group"] != "holdout"]
    if holdout is None or not treated:
        return None
    n1 = sum(g["contacts"] for g in treated)
    c1 = sum(g["converted"] for g in treated)
    n0, c0 = holdout["contacts"], holdout["converted"]
    if not n1 or not n0:
        return None
    p1, p0 = c1 / n1, c0 / n0
    diff = p1 - p0
    se = math.sqrt(p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0)
    pooled = (c1 + c0) / (n1 + n0)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n0))
    p_value = math.erfc(abs(diff) / se0 / math.sqrt(2)) if se0 > 0 else 1.0
    return {
        "treatment": {"contacts": n1, "converted": c1, "rate": round(p1, 4)},
        "holdout": {"contacts": n0, "converted": c0, "rate": round(p0, 4)},
        "uplift": round(diff, 4),
        "ci95": [round(diff - Z95 * se, 4), round(diff + Z95 * se, 4)],
        "p_value": round(p_value, 4),
        "significant": bool(p_value < 0.05),
    }


def contact_automations(store: Store, contact_id: int) -> list[dict[str, Any]]:
    """Which automations touched a contact, step by step and why (for the contact's timeline)."""
    with store.session() as s:
        live = s.rows(
            "SELECT coalesce(merged_into, contact_id) FROM contacts WHERE contact_id = ?", [contact_id]
        )
        if not live:
            raise LookupError(f"there is no contact {contact_id}")
        rows = s.dicts(
            "SELECT l.automation_key, l.enrollment_id, l.seq, l.logged_at, l.step, l.outcome, l.detail, n.status, n.variant "
            "FROM enrollment_log l JOIN enrollments n ON n.enrollment_id = l.enrollment_id "
            "WHERE l.contact_id = ? OR l.contact_id IN (SELECT contact_id FROM contacts WHERE merged_into = ?) "
            "ORDER BY l.logged_at, l.enrollment_id, l.seq",
            [live[0][0], live[0][0]],
        )
    return [
        {
            "automation": r["automation_key"],
            "enrollment": int(r["enrollment_id"]),
            "at": r["logged_at"].isoformat(),
            "step": r["step"],
            "outcome": r["outcome"],
            "detail": r["detail"],
            "status": r["status"],
            "variant": r["variant"],
        }
        for r in rows
    ]


# Webhook errors recorded by earlier versions ended with the first 200 characters of the reply,
# which may hold the receiver's internals: the stats keep the status only.
_REPLY_BODY = re.compile(r"^(webhook \S+ answered \d{3}): .*", re.DOTALL)


def _without_reply(error: str | None) -> str | None:
    return _REPLY_BODY.sub(r"\1", error) if error else error
