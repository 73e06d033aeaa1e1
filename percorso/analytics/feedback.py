"""Survey results inside the store engine: NPS, CSAT and CES with counts and a 95% confidence
interval, over a period and by week, from the ``Survey Answered`` events the answers are stored as.

- **NPS**: the share of promoters (9-10) minus the share of detractors (0-6), from -100 to +100.
  Its 95% interval is the normal approximation for the mean of a score that is +1, 0 or -1:
  ``NPS ± z · sqrt((p + d - (p - d)²) / n)`` (p, d: the two shares), the method survey
  statisticians use for NPS margins of error.
- **CSAT**: the share answering 4 or 5 of 5 (and the mean); a Wilson interval for the share.
- **CES**: the mean effort score (1-7) with a t-free normal interval (n is large or it is shown wide).
"""

from __future__ import annotations

import math
from datetime import datetime
from statistics import NormalDist
from typing import Any

from percorso.analytics.personas import persona_sql
from percorso.analytics.sql import RESOLVED_EVENTS, condition_sql
from percorso.feedback.definition import SCALES, Survey
from percorso.feedback.themes import themes
from percorso.journey.definition import Journey, display
from percorso.store import Store
from percorso.store.base import Session, like_literal

ANSWERED = "Survey Answered"
SHOWN = "Survey Shown"  # sent by percorso.js when it shows a survey
COMMENTED = "Survey Commented"  # a comment added after a score given from an email
DISMISSED = "Survey Dismissed"
Z95 = NormalDist().inv_cdf(0.975)
NPS_SCORES = [str(n) for n in range(11)]
RATINGS = [str(n) for n in range(1, 6)]


def answer_columns(s: Session) -> tuple[str, list[Any]]:
    """The columns a score is read from, for a query over events ``e``: ``score``, ``survey``,
    ``rating`` and ``kind``, each parsed only from events whose properties may hold the key (a
    cheap test), so JSON is parsed on few rows. ``survey`` names the kind in imported data
    (``{"survey": "nps"}``); percorso's own surveys name themselves there and give ``kind``."""
    columns, params = [], []
    for key in ("score", "survey", "rating", "kind"):
        may, may_p = s.json_may_have("e.properties", key)
        value, value_p = s.json_text("e.properties", key)
        columns.append(f"CASE WHEN {may} THEN {value} END AS {key}")
        params += [may_p, value_p]
    return ", ".join(columns), params


def score_columns() -> tuple[str, list[Any]]:
    """``nps`` (0-10) and ``csat`` (1-5) as integers, or NULL, from the columns of
    :func:`answer_columns`: the one classification of an answer every page shares (the map's
    emotion lane, the pain points' score drops, a contact's latest score)."""
    nps_list = ", ".join("?" for _ in NPS_SCORES)
    rating_list = ", ".join("?" for _ in RATINGS)
    text = (
        "CASE WHEN (lower(survey) = 'nps' OR lower(kind) = 'nps') "
        f"AND score IN ({nps_list}) THEN CAST(score AS INTEGER) END AS nps, "
        f"CASE WHEN rating IN ({rating_list}) THEN CAST(rating AS INTEGER) "
        "WHEN (lower(survey) = 'csat' OR lower(kind) = 'csat') "
        f"AND score IN ({rating_list}) THEN CAST(score AS INTEGER) END AS csat"
    )
    return text, [*NPS_SCORES, *RATINGS, *RATINGS]


def nps_interval(n: int, promoters: int, detractors: int) -> tuple[float, float] | None:
    if n == 0:
        return None
    p, d = promoters / n, detractors / n
    nps = p - d
    half = Z95 * math.sqrt(max(p + d - nps * nps, 0.0) / n)
    return round(100 * max(nps - half, -1.0), 1), round(100 * min(nps + half, 1.0), 1)


def wilson_interval(n: int, k: int) -> tuple[float, float] | None:
    """The Wilson score interval of a share ``k / n``, in percent."""
    if n == 0:
        return None
    share = k / n
    centre = share + Z95 * Z95 / (2 * n)
    half = Z95 * math.sqrt(share * (1 - share) / n + Z95 * Z95 / (4 * n * n))
    scale = 1 + Z95 * Z95 / n
    return round(100 * (centre - half) / scale, 1), round(100 * (centre + half) / scale, 1)


def survey_results(
    store: Store, survey: Survey, start: datetime, end: datetime, *, period: str = "week"
) -> dict[str, Any]:
    """The survey's score over ``[start, end)``, in total and per ``period`` (day, week, month)."""
    if period not in ("day", "week", "month"):
        raise ValueError(f"period must be day, week or month, not {period!r}")
    question = survey.scored()
    result: dict[str, Any] = {"survey": survey.key, "from": start.isoformat(), "to": end.isoformat()}
    # From the answers' typed copy (store/answers.py), found by survey and time.
    where = "a.survey = ? AND a.timestamp >= ? AND a.timestamp < ?"
    params: list[Any] = [survey.key, start, end]
    with store.session() as s:
        if question is None:
            result["responses"] = int(
                s.rows(f"SELECT count(*) FROM survey_answers a WHERE {where}", params)[0][0]
            )
            return result
        # One pass over the answers: per period the counts and the score's sum and sum of
        # squares; the total, the means and the deviations are added up from them here.
        rows = s.rows(
            f"SELECT date_trunc('{period}', a.timestamp) AS p, count(*), count(a.score), "
            "sum(CASE WHEN a.score >= 9 THEN 1 ELSE 0 END), sum(CASE WHEN a.score <= 6 THEN 1 ELSE 0 END), "
            "sum(CASE WHEN a.score >= 4 THEN 1 ELSE 0 END), sum(a.score), sum(a.score * a.score) "
            f"FROM survey_answers a WHERE {where} GROUP BY 1 ORDER BY 1",
            params,
        )
    sums = [[int(r[1]), *(int(v or 0) for v in r[2:6]), float(r[6] or 0), float(r[7] or 0)] for r in rows]
    total = [sum(column) for column in zip(*sums, strict=True)] if sums else [0] * 7
    result["responses"] = int(total[0])
    result["kind"] = question.kind
    result["scale"] = list(SCALES[question.kind])
    result["score"] = _score(question.kind, _moments(total[1:]))
    result["periods"] = [
        {"period": row[0].date().isoformat(), **_score(question.kind, _moments(part[1:]))}
        for row, part in zip(rows, sums, strict=True)
        if part[1]  # periods with answers but no score are not drawn
    ]
    return result


def _moments(part: list[Any]) -> tuple[int, int, int, int, float | None, float | None]:
    """(n, high, low, satisfied, mean, sample deviation) from counts, sum and sum of squares."""
    n, high, low, satisfied, total, squares = part
    n = int(n)
    mean = total / n if n else None
    sd = math.sqrt(max(squares - total * total / n, 0.0) / (n - 1)) if n > 1 else None
    return n, int(high), int(low), int(satisfied), mean, sd


BREAKDOWNS = ("stage", "persona", "touchpoint", "page", "channel")
#: How far back an answer looks for the touchpoint it is about (the last one before it).
TOUCHPOINT_LOOKBACK = "1 day"


def survey_breakdown(
    store: Store,
    survey: Survey,
    start: datetime,
    end: datetime,
    by: str,
    journey: Journey | None = None,
    lang: str = "en",
) -> list[dict[str, Any]]:
    """The survey's score per group of answers over ``[start, end)``:

    - ``stage``: the stage of ``journey`` the contact was in when answering (the map's emotion
      lane counts the same answers in the same stages);
    - ``persona``: each persona of ``journey`` the contact is in now (one answer can count in
      several);
    - ``touchpoint``: the journey's touchpoint of the contact's last event in the day before the
      answer (what the answer is most likely about);
    - ``page``: the page the survey was answered on; ``channel``: where (survey widget, email).

    Groups are ordered by answers, largest first; ``group`` None gathers answers with no group."""
    if by not in BREAKDOWNS:
        raise ValueError(f"by must be one of {', '.join(BREAKDOWNS)}, not {by!r}")
    if by in ("stage", "persona", "touchpoint") and journey is None:
        raise ValueError(f"a breakdown by {by} needs a journey")
    question = survey.scored()
    if question is None:
        return []
    with store.session() as s:
        survey_sql, survey_param = s.json_text("e.properties", "survey")
        score_sql, score_params = s.json_number("e.properties", "score")
        answers = (
            f"SELECT e.message_id, e.timestamp AS answered_at, e.channel, e.page_path, i.contact_id, {score_sql} AS score "
            f"FROM {RESOLVED_EVENTS} WHERE e.type = 'track' AND e.event = ? AND {survey_sql} = ? "
            "AND e.timestamp >= ? AND e.timestamp < ?"
        )
        params: list[Any] = [*score_params, ANSWERED, survey_param, survey.key, start, end]
        grouped, group_params = _grouping(s, by, journey)
        rows = s.rows(
            f"WITH a AS ({answers}), g AS ({grouped}) "
            "SELECT grp, count(score), sum(CASE WHEN score >= 9 THEN 1 ELSE 0 END), "
            "sum(CASE WHEN score <= 6 THEN 1 ELSE 0 END), sum(CASE WHEN score >= 4 THEN 1 ELSE 0 END), "
            "avg(score), stddev_samp(score) FROM g WHERE score IS NOT NULL GROUP BY grp ORDER BY 2 DESC, 1",
            [*params, *group_params],
        )
    names: dict[str, str] = {}
    if journey is not None:
        names = {
            "stage": {st.key: display(st.name, lang) for st in journey.stages},
            "persona": {p.key: display(p.name, lang) for p in journey.personas},
            "touchpoint": {t.key: display(t.name, lang) for t in journey.touchpoints},
        }.get(by, {})
    return [
        {
            "group": row[0],
            "name": names.get(row[0], row[0]) if row[0] else None,
            **_score(question.kind, row[1:]),
        }
        for row in rows
    ]


def _grouping(s: Session, by: str, journey: Journey | None) -> tuple[str, list[Any]]:
    """``SELECT grp, score`` over the answers ``a``, one row per answer and group."""
    if by in ("channel", "page"):
        return f"SELECT {'channel' if by == 'channel' else 'page_path'} AS grp, score FROM a", []
    assert journey is not None
    if by == "stage":
        return (
            "SELECT se.stage AS grp, a.score FROM a LEFT JOIN stage_entries se ON se.journey_key = ? "
            "AND se.contact_id = a.contact_id AND se.entered_at <= a.answered_at AND (se.left_at IS NULL OR se.left_at > a.answered_at)",
            [journey.key],
        )
    if by == "persona":
        if not journey.personas:
            return "SELECT CAST(NULL AS TEXT) AS grp, score FROM a", []
        members = [persona_sql(s, p) for p in journey.personas]
        union = " UNION ALL ".join(f"SELECT ? AS persona, m.contact_id FROM ({m.text}) m" for m in members)
        union_params = [x for p, m in zip(journey.personas, members, strict=True) for x in (p.key, *m.params)]
        return (
            f"SELECT pm.persona AS grp, a.score FROM a LEFT JOIN ({union}) pm ON pm.contact_id = a.contact_id",
            union_params,
        )
    cases, tp_params = [], []
    for t in journey.touchpoints:
        conds = [condition_sql(s, c) for c in t.match]
        cases.append("WHEN " + " OR ".join(f"({c.text})" for c in conds) + " THEN ?")
        tp_params += [p for c in conds for p in c.params] + [t.key]
    if not cases:
        return "SELECT CAST(NULL AS TEXT) AS grp, score FROM a", []
    return (
        "SELECT t.tp AS grp, a.score FROM a LEFT JOIN (SELECT message_id, tp, row_number() OVER "
        "(PARTITION BY message_id ORDER BY seen_at DESC, event_id DESC) AS rn FROM (SELECT a.message_id, "
        f"e.timestamp AS seen_at, e.message_id AS event_id, CASE {' '.join(cases)} END AS tp FROM a "
        "JOIN identities i ON i.contact_id = a.contact_id JOIN events e ON e.identity_id = i.identity_id "
        f"WHERE e.timestamp <= a.answered_at AND e.timestamp > a.answered_at - INTERVAL '{TOUCHPOINT_LOOKBACK}' "
        "AND e.message_id <> a.message_id) x WHERE tp IS NOT NULL) t ON t.message_id = a.message_id AND t.rn = 1",
        tp_params,
    )


def _score(kind: str, row: Any) -> dict[str, Any]:
    n, high, low, satisfied, mean, sd = (
        (row[0] or 0),
        (row[1] or 0),
        (row[2] or 0),
        (row[3] or 0),
        row[4],
        row[5],
    )
    n, high, low, satisfied = int(n), int(high), int(low), int(satisfied)
    out: dict[str, Any] = {"answers": n, "mean": round(float(mean), 2) if mean is not None else None}
    if kind == "nps":
        out.update(
            promoters=high,
            passives=n - high - low,
            detractors=low,
            nps=round(100 * (high - low) / n, 1) if n else None,
            ci95=nps_interval(n, high, low),
        )
    elif kind == "csat":
        out.update(
            satisfied=satisfied,
            csat=round(100 * satisfied / n, 1) if n else None,
            ci95=wilson_interval(n, satisfied),
        )
    else:
        half = Z95 * float(sd) / math.sqrt(n) if n > 1 and sd is not None else None
        out["ci95"] = (
            (round(float(mean) - half, 2), round(float(mean) + half, 2)) if half is not None else None
        )
    return out


def survey_comments(
    store: Store, survey: Survey, start: datetime, end: datetime, *, q: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """The newest answers that hold a comment, with their score and contact; ``q`` a literal
    substring of the comment (any case)."""
    with store.session() as s:
        survey_sql, survey_param = s.json_text("e.properties", "survey")
        comment_sql, comment_param = s.json_text("e.properties", "comment")
        score_sql, score_params = s.json_number("e.properties", "score")
        where = (
            f"e.type = 'track' AND e.event IN (?, ?) AND {survey_sql} = ? AND e.timestamp >= ? AND e.timestamp < ? "
            f"AND {comment_sql} IS NOT NULL"
        )
        params: list[Any] = [ANSWERED, COMMENTED, survey_param, survey.key, start, end, comment_param]
        if q:
            where += f" AND lower({comment_sql}) LIKE ? ESCAPE '\\'"
            params += [comment_param, f"%{like_literal(q.lower())}%"]
        rows = s.rows(
            f"SELECT e.timestamp, {score_sql}, {comment_sql}, i.contact_id FROM events e "
            f"JOIN identities i ON i.identity_id = e.identity_id WHERE {where} "
            "ORDER BY e.timestamp DESC, e.message_id DESC LIMIT ?",
            [*score_params, comment_param, *params, limit],
        )
    return [
        {
            "at": at,
            "score": int(score) if score is not None else None,
            "comment": comment,
            "contact": int(contact),
        }
        for at, score, comment, contact in rows
    ]


#: The newest comments a theme view reads (a period with more is read from its newest).
THEME_COMMENTS = 5000


def comment_themes(store: Store, survey: Survey, start: datetime, end: datetime) -> dict[str, Any]:
    """The words and phrases the survey's comments in ``[start, end)`` share
    (:mod:`percorso.feedback.themes`), from the newest :data:`THEME_COMMENTS`."""
    with store.session() as s:
        survey_sql, survey_param = s.json_text("e.properties", "survey")
        comment_sql, comment_param = s.json_text("e.properties", "comment")
        score_sql, score_params = s.json_number("e.properties", "score")
        rows = s.rows(
            f"SELECT {comment_sql}, {score_sql} FROM events e WHERE e.type = 'track' AND e.event IN (?, ?) "
            f"AND {survey_sql} = ? AND e.timestamp >= ? AND e.timestamp < ? AND {comment_sql} IS NOT NULL "
            "ORDER BY e.timestamp DESC, e.message_id DESC LIMIT ?",
            [
                comment_param, *score_params, ANSWERED, COMMENTED, survey_param, survey.key, start, end,
                comment_param, THEME_COMMENTS,
            ],
        )  # fmt: skip
    found = themes((str(comment), score) for comment, score in rows)
    return {"comments_read": len(rows), **found}
