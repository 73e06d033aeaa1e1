"""The journey map, computed from live data: one call returns every stage of a journey for a
persona and a period — contacts, conversion, time in stage, what customers do, through which
touchpoints and channels, how they feel (where feedback exists), the pain points and the KPIs.

The dashboard draws it; ``percorso map --format json`` prints it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from typing import Any

from percorso.analytics.feedback import answer_columns, score_columns
from percorso.analytics.painpoints import find_pain_points, in_language
from percorso.analytics.personas import find_persona, journey_persona_sql
from percorso.analytics.significance import Settings as PainSettings
from percorso.analytics.sql import MEMBERSHIPS, Sql, Subject, condition_sql, subject
from percorso.analytics.stages import stage_overview, update
from percorso.journey.definition import Journey, display
from percorso.journey.names import action_name
from percorso.store import Store

TOP_ACTIONS = 5


def people_of(journey: Journey, chosen: Sql | None) -> Sql | None:
    """The map's filter as contact ids (pain points count people): a journey that follows
    accounts gives the people of the chosen accounts."""
    if chosen is None or journey.subject != "account":
        return chosen
    return Sql(f"SELECT pm.cid FROM ({MEMBERSHIPS}) pm WHERE pm.gid IN ({chosen.text})", chosen.params)


def journey_map(
    store: Store,
    journey: Journey,
    *,
    persona: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    lang: str = "en",
    with_pain_points: bool = True,
    refresh: bool = True,
    only: Sql | None = None,
    dimensions: tuple[str, ...] | None = None,
    memo: Callable[[Callable[[], dict[str, Any]]], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The map of ``journey`` (see the module's text). ``memo``, given, is handed the computation
    of the pain points and returns its result: a dashboard keeps one result for both languages
    (the names and summaries are chosen afterwards and the result is not changed)."""
    end = end or datetime.now(UTC)
    start = start or end - timedelta(weeks=26)
    if refresh:
        update(store, journey)
    chosen = find_persona(journey, persona) if persona else None
    with store.session() as s:
        contacts = journey_persona_sql(s, journey, chosen, end) if chosen else None
    if only is not None:
        # A further contact filter (the dashboard's channel or saved segment), ANDed with the
        # persona; a journey that follows accounts keeps the accounts of those contacts.
        if journey.subject == "account":
            only = Sql(f"SELECT om.gid FROM ({MEMBERSHIPS}) om WHERE om.cid IN ({only.text})", only.params)
        contacts = (
            Sql(
                f"SELECT * FROM ({contacts.text}) pc WHERE pc.{subject(journey.subject).column} IN ({only.text})",
                [*contacts.params, *only.params],
            )
            if contacts
            else only
        )
    overview = stage_overview(store, journey, since=start, until=end, lang=lang, contacts=contacts)
    funnels = _funnel_conversions(store, journey, start, end) if contacts is None else {}
    activity, feedback = _activity(store, journey, start, end, contacts)
    quotes = _quotes(store, journey, start, end, contacts)
    pains: list[dict[str, Any]] = []
    compared: dict[str, list[str]] = {}
    pain_notes: list[dict[str, Any]] = []
    if with_pain_points:
        people = people_of(journey, contacts)

        def compute() -> dict[str, Any]:
            return find_pain_points(
                store,
                journey,
                start=start,
                end=end,
                as_of=min(end, datetime.now(UTC)),
                settings=PainSettings(dimensions=dimensions),
                contacts=people,
            )

        found = in_language(memo(compute) if memo else compute(), journey, lang)
        pains, compared, pain_notes = found["pain_points"], found["dimensions"], found["notes"]
    by_stage_pains = _assign_pains(journey, pains)
    stages = []
    for k, (stage, numbers) in enumerate(zip(journey.stages, overview["stages"], strict=True), 1):
        act = activity.get(k, {"actions": {}, "channels": {}, "touchpoints": {}, "revenue": {}, "events": 0})
        fb = feedback.get(k, {})
        stages.append(
            {
                "stage": stage.key,
                "name": display(stage.name, lang),
                "index": k,
                "contacts": {
                    "entered": numbers["entered_in_period"],
                    "now": numbers["current_contacts"],
                    "stuck": numbers["stuck"],
                },
                "conversion_to_next": numbers["conversion_to_next"],
                "time_in_stage": {
                    "median_seconds": numbers["median_seconds_in_stage"],
                    "p90_seconds": numbers["p90_seconds_in_stage"],
                },
                "top_actions": [
                    {**a, "name": action_name(journey, a["action"], lang)}
                    for a in _top(act["actions"], TOP_ACTIONS)
                ],
                "channels": _shares(act["channels"]),
                "touchpoints": _touchpoints(journey, act["touchpoints"], lang),
                "emotion": {**_emotion(fb), "quotes": quotes.get(k, [])},
                "pain_points": by_stage_pains.get(stage.key, []),
                "kpis": _kpis(stage, numbers, act, fb, lang, journey.currency, funnels),
            }
        )
    return {
        "journey": journey.key,
        "name": display(journey.name, lang),
        "subject": journey.subject,
        "persona": {"key": chosen.key, "name": display(chosen.name, lang)} if chosen else None,
        "period": {"start": start.isoformat(), "end": end.isoformat()},
        "progression": journey.progression,
        "stages": stages,
        "lanes": sorted({display(t.lane, lang) for t in journey.touchpoints}),
        "unplaced_pain_points": by_stage_pains.get("", []),
        "pain_point_dimensions": compared,
        "pain_point_notes": pain_notes,
        "notes": {
            "counts": "accounts (each account's stage moves when any of its people acts)"
            if journey.subject == "account"
            else "contacts, after identity resolution",
            "actions": f"events of {subject(journey.subject).noun} while they were in the stage, in the period",
            "emotion": "NPS (-1..1 from -100..100) where surveys exist, else CSAT from 1-5 ratings; "
            "evidence: none, low (< 30 responses), medium (< 200), high",
            "pain_points": "placed at the stage whose entry criteria name the step's event",
        },
    }


def _stage_windows(subj: Subject, subjects: Sql | None) -> tuple[str, list[Any]]:
    only = f" AND {subj.column} IN ({subjects.text})" if subjects else ""
    return (
        f"se AS (SELECT {subj.column} AS sid, stage_index, entered_at, coalesce(left_at, ?) AS left_at "
        f"FROM {subj.entries} WHERE journey_key = ? AND entered_at < ? AND coalesce(left_at, ?) > ?{only})",
        list(subjects.params) if subjects else [],
    )


def _subject_events(subj: Subject) -> str:
    """Joins ``se`` (stage windows) to the events its subject made: a contact's own, or those of
    an account's people (an event naming another account does not count)."""
    if subj.kind == "account":
        return (
            f"se JOIN ({MEMBERSHIPS}) m ON m.gid = se.sid JOIN identities i ON i.contact_id = m.cid "
            "JOIN events e ON e.identity_id = i.identity_id AND (e.group_id IS NULL OR e.group_id = se.sid)"
        )
    return "se JOIN identities i ON i.contact_id = se.sid JOIN events e ON e.identity_id = i.identity_id"


def _activity(
    store: Store, journey: Journey, start: datetime, end: datetime, contacts: Sql | None
) -> tuple[dict[int, dict[str, Any]], dict[int, dict[str, Any]]]:
    """One scan of the events contacts made while in each stage: actions, channels, touchpoints,
    revenue, and the feedback (NPS and CSAT counts) — per stage."""
    subj = subject(journey.subject)
    windows, fp = _stage_windows(subj, contacts)
    with store.session() as s:
        s.tune_for_analytics()
        cases = []
        tp_params: list[Any] = []
        for t in journey.touchpoints:
            conds = [condition_sql(s, c) for c in t.match]
            cases.append("WHEN " + " OR ".join(f"({c.text})" for c in conds) + " THEN ?")
            tp_params += [p for c in conds for p in c.params] + [t.key]
        touchpoint = f"CASE {' '.join(cases)} END" if cases else "NULL"
        # Revenue is only read for the events named by revenue KPIs; feedback values only from
        # events whose properties may hold the key (a cheap test): JSON is parsed on few rows.
        revenue_events = sorted(
            {k.event for st in journey.stages for k in st.kpis if k.metric == "revenue" and k.event}
        )
        revenue = "CAST(NULL AS DOUBLE PRECISION)"
        revenue_params: list[Any] = []
        if revenue_events:
            number, number_params = s.json_number("e.properties", "revenue")
            revenue = f"CASE WHEN e.event IN ({', '.join('?' for _ in revenue_events)}) THEN {number} END"
            revenue_params = [*revenue_events, *number_params]
        answers, answer_params = answer_columns(s)
        scores, score_params = score_columns()
        rows = s.rows(
            f"WITH {windows}, x0 AS (SELECT se.stage_index, se.sid, e.event, e.type, e.name, "
            f"e.channel, {touchpoint} AS touchpoint, {revenue} AS revenue, {answers} "
            f"FROM {_subject_events(subj)} "
            "AND e.timestamp >= se.entered_at AND e.timestamp < se.left_at AND e.timestamp >= ? AND e.timestamp < ?), "
            f"x AS (SELECT stage_index, event, type, name, channel, touchpoint, revenue, {scores} FROM x0) "
            # grouped by the raw columns (cheaper than building each event's action name)
            "SELECT stage_index, event, type, name, channel, touchpoint, count(*), sum(revenue), count(nps), "
            "sum(CASE WHEN nps >= 9 THEN 1 ELSE 0 END), sum(CASE WHEN nps <= 6 THEN 1 ELSE 0 END), "
            "count(csat), sum(CASE WHEN csat >= 4 THEN 1 ELSE 0 END) FROM x GROUP BY 1, 2, 3, 4, 5, 6",
            [
                end, journey.key, end, end, start, *fp,
                *tp_params, *revenue_params, *answer_params,
                start, end,
                *score_params,
            ],
        )  # fmt: skip
    activity: dict[int, dict[str, Any]] = {}
    feedback: dict[int, dict[str, Any]] = {}
    for (
        stage_index,
        event,
        kind,
        name,
        channel,
        tp,
        n,
        revenue,
        nps_n,
        promoters,
        detractors,
        csat_n,
        satisfied,
    ) in rows:
        k = int(stage_index)
        action = event if event is not None else f"{kind}: {name or ''}"
        a = activity.setdefault(
            k, {"actions": {}, "channels": {}, "touchpoints": {}, "revenue": {}, "events": 0}
        )
        a["actions"][action] = a["actions"].get(action, 0) + int(n)
        a["channels"][channel] = a["channels"].get(channel, 0) + int(n)
        if tp is not None:
            a["touchpoints"][tp] = a["touchpoints"].get(tp, 0) + int(n)
        if revenue is not None:
            a["revenue"][action] = a["revenue"].get(action, 0.0) + float(revenue)
        a["events"] += int(n)
        fb = feedback.setdefault(
            k, {"nps_n": 0, "promoters": 0, "detractors": 0, "csat_n": 0, "satisfied": 0}
        )
        for key, value in (
            ("nps_n", nps_n), ("promoters", promoters), ("detractors", detractors),
            ("csat_n", csat_n), ("satisfied", satisfied),
        ):  # fmt: skip
            fb[key] += int(value or 0)
    return activity, feedback


#: The sides of a score a stage's quotes are taken from, one each: unhappy, neutral, happy.
TONES = ("low", "mid", "high")
QUOTE_LENGTH = 280


def _quotes(
    store: Store, journey: Journey, start: datetime, end: datetime, contacts: Sql | None
) -> dict[int, list[dict[str, Any]]]:
    """The words behind each stage's emotion: of the answers with a comment given while in the
    stage (counted in the stage as the curve's scores are), the newest of an unhappy score (NPS
    0-6, CSAT 1-2), of a neutral one (7-8, 3) and of a happy one (9-10, 4-5), in that order."""
    subj = subject(journey.subject)
    windows, fp = _stage_windows(subj, contacts)
    with store.session() as s:
        s.tune_for_analytics()
        answers, answer_params = answer_columns(s)
        scores, score_params = score_columns()
        may, may_p = s.json_may_have("e.properties", "comment")
        comment, comment_p = s.json_text("e.properties", "comment")
        tone = (
            "CASE WHEN nps <= 6 OR csat <= 2 THEN 'low' WHEN nps >= 9 OR csat >= 4 THEN 'high' ELSE 'mid' END"
        )
        rows = s.rows(
            f"WITH {windows}, x0 AS (SELECT se.stage_index, e.timestamp AS ts, e.message_id, "
            f"CASE WHEN {may} THEN {comment} END AS comment, {answers} "
            f"FROM {_subject_events(subj)} AND e.type = 'track' "
            "AND e.timestamp >= se.entered_at AND e.timestamp < se.left_at AND e.timestamp >= ? AND e.timestamp < ?), "
            f"x1 AS (SELECT stage_index, ts, message_id, comment, {scores} FROM x0 WHERE comment IS NOT NULL), "
            f"x AS (SELECT x1.*, {tone} AS tone FROM x1 WHERE (nps IS NOT NULL OR csat IS NOT NULL) "
            "AND trim(comment) <> '') "
            "SELECT stage_index, tone, ts, comment, nps, csat FROM (SELECT x.*, row_number() OVER "
            "(PARTITION BY stage_index, tone ORDER BY ts DESC, message_id DESC) AS rn FROM x) q WHERE rn = 1",
            [
                end,
                journey.key,
                end,
                end,
                start,
                *fp,
                may_p,
                comment_p,
                *answer_params,
                start,
                end,
                *score_params,
            ],
        )
    out: dict[int, list[dict[str, Any]]] = {}
    for stage_index, tone, ts, text, nps, csat in sorted(rows, key=lambda r: (r[0], TONES.index(r[1]))):
        text = " ".join(str(text).split())
        out.setdefault(int(stage_index), []).append(
            {
                "text": text if len(text) <= QUOTE_LENGTH else text[: QUOTE_LENGTH - 1].rstrip() + "…",
                "tone": tone,
                "metric": "NPS" if nps is not None else "CSAT",
                "score": int(nps if nps is not None else csat),
                "at": ts.isoformat() if hasattr(ts, "isoformat") else str(ts),
            }
        )
    return out


def _emotion(fb: dict[str, Any]) -> dict[str, Any]:
    nps_n, csat_n = int(fb.get("nps_n") or 0), int(fb.get("csat_n") or 0)
    nps = csat = None
    if nps_n:
        nps = round(100 * (int(fb["promoters"]) - int(fb["detractors"])) / nps_n, 1)
    if csat_n:
        csat = round(int(fb["satisfied"]) / csat_n, 4)
    if nps is not None:
        score, n = nps / 100, nps_n
    elif csat is not None:
        score, n = 2 * csat - 1, csat_n
    else:
        score, n = None, 0
    evidence = "none" if n == 0 else "low" if n < 30 else "medium" if n < 200 else "high"
    return {
        "score": None if score is None else round(score, 3),
        "evidence": evidence,
        "nps": nps,
        "nps_responses": nps_n,
        "csat": csat,
        "csat_responses": csat_n,
    }


def _top(counts: dict[str, int], n: int) -> list[dict[str, Any]]:
    total = sum(counts.values()) or 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    return [{"action": a, "events": c, "share": round(c / total, 4)} for a, c in ranked]


def _shares(counts: dict[str, int]) -> list[dict[str, Any]]:
    total = sum(counts.values()) or 1
    return [
        {"channel": ch, "events": c, "share": round(c / total, 4)}
        for ch, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    ]


def _touchpoints(journey: Journey, counts: dict[str, int], lang: str) -> list[dict[str, Any]]:
    total = sum(counts.values()) or 1
    out = []
    for t in journey.touchpoints:
        if t.key in counts:
            out.append(
                {
                    "touchpoint": t.key,
                    "name": display(t.name, lang),
                    "lane": display(t.lane, lang),
                    "events": counts[t.key],
                    "share": round(counts[t.key] / total, 4),
                }
            )
    return sorted(out, key=lambda t: -t["events"])


def _funnel_conversions(
    store: Store, journey: Journey, start: datetime, end: datetime
) -> dict[str, float | None]:
    """The conversion of each funnel a KPI names, over the map's period: the same function and
    spec as the Funnels page's preset for that funnel, so both show one number."""
    from percorso.analytics.funnel import FunnelSpec, funnel
    from percorso.analytics.painpoints import journey_funnels

    wanted = {k.funnel for st in journey.stages for k in st.kpis if k.metric == "funnel"}
    out: dict[str, float | None] = {}
    for f in journey_funnels(journey):
        if f.key in wanted:
            spec = FunnelSpec(
                steps=f.steps, start=start, end=end, window_seconds=f.window_seconds,
                order=f.order, exclusions=f.exclusions, unit=f.unit, session_gap=f.session_gap,
            )  # fmt: skip
            total = funnel(store, spec, trend=False, distribution=False)["total"]
            out[f.key] = round(total["converted"] / total["entered"], 4) if total["entered"] else None
    return out


def _kpis(
    stage: Any,
    numbers: dict[str, Any],
    act: dict[str, Any],
    fb: dict[str, Any],
    lang: str,
    currency: str = "EUR",
    funnels: dict[str, float | None] | None = None,
) -> list[dict[str, Any]]:
    emotion = _emotion(fb)
    out = []
    for kpi in stage.kpis:
        value: Any = None
        if kpi.metric == "contacts":
            value = numbers["entered_in_period"]
        elif kpi.metric == "conversion":
            value = numbers["conversion_to_next"]
        elif kpi.metric == "median_time_in_stage":
            value = numbers["median_seconds_in_stage"]
        elif kpi.metric == "events":
            value = act["actions"].get(kpi.event, 0)
        elif kpi.metric == "revenue":
            value = round(act["revenue"].get(kpi.event, 0.0), 2)
        elif kpi.metric == "nps":
            value = emotion["nps"]
        elif kpi.metric == "csat":
            value = emotion["csat"]
        elif kpi.metric == "funnel":
            # Under a persona, channel or segment filter the funnel is not narrowed: no number.
            value = (funnels or {}).get(kpi.funnel or "")
        out.append(
            {
                "name": display(kpi.name, lang),
                "metric": kpi.metric,
                "value": value,
                "target": kpi.target,
                "on_target": None if kpi.target is None or value is None else value >= kpi.target,
                **({"currency": currency} if kpi.metric == "revenue" else {}),
            }
        )
    return out


def _assign_pains(journey: Journey, pains: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """A pain point belongs to the stage whose entry criteria name the event of its step."""
    funnels = {f.key: f for f in journey.funnels}
    out: dict[str, list[dict[str, Any]]] = {}
    for pain in pains:
        if pain.get("stage"):  # found in a stage (score drops, frustrated clicks)
            out.setdefault(pain["stage"], []).append(pain)
            continue
        funnel = funnels.get(pain["funnel"])
        stage_key = ""
        if funnel is not None:
            step = funnel.steps[pain["step_index"] - 1]
            events = [step.event] if isinstance(step.event, str) else list(step.event or [])
            for stage in journey.stages:
                names = [
                    n
                    for c in stage.enter.any
                    for n in ([c.event] if isinstance(c.event, str) else list(c.event or []))
                ]
                if any(fnmatchcase(e, n) for e in events for n in names):
                    stage_key = stage.key
                    break
        out.setdefault(stage_key, []).append(pain)
    return out
