"""Pain points from what customers say and do on the site, beside the funnel detectors of
:mod:`percorso.analytics.painpoints` and ranked with them:

``score_drop``   a stage whose NPS (or CSAT) fell against the period before of the same length:
                 the answers are counted in the stage the contact was in when answering, as the
                 map's emotion lane counts them; the difference is tested with its standard error
                 (for NPS, each answer is +1, 0 or -1: ``var = p + d - (p - d)²``; for CSAT a
                 two-proportion test of the satisfied share);
``frustration``  a clicked element (page and selector) where far more clicks are rage clicks or
                 dead clicks (percorso.js heatmap capture) than on the rest of the site.

The same thresholds as the funnel detectors hold: ``z >= min_z``, an effect of at least
``min_effect`` (NPS on its -1..+1 scale, shares as fractions) and ``min_contacts`` people on
each side. The counting runs as SQL in the store; Python only tests the aggregated rows.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any
from urllib.parse import quote

from percorso.analytics.feedback import answer_columns, score_columns
from percorso.analytics.significance import Settings, p_value, tested, tested_z
from percorso.analytics.sql import RESOLVED_EVENTS, Sql
from percorso.analytics.summaries import LANGS, summaries
from percorso.journey.definition import Journey, display
from percorso.store.base import Session


def _finding(kind: str, *, where: str, what: str, stage: str | None, z: float, affected: float,
             link: str, evidence: dict[str, Any], facts: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    # A stage is named in each summary's own language (``facts["stage"]`` maps language to name).
    stage_names = facts.get("stage")
    if isinstance(stage_names, dict):
        texts = {lg: summaries(kind, {**facts, "stage": name})[lg] for lg, name in stage_names.items()}
    else:
        texts = summaries(kind, facts)
    z = round(z, 2)
    return {
        # the same problem found again (another period, another language) has the same key
        "key": "|".join([kind, where, what if kind == "frustration" else (stage or "")]),
        "kind": kind,
        "funnel": None,
        "funnel_name": where,
        "step": what,
        "step_index": None,
        "stage": stage,
        "segment": None,
        "when": None,
        "contacts_affected": round(affected),
        "z": z,
        "p_value": float(f"{p_value(z):.3g}"),
        "evidence": evidence,
        "link": link,
        "summary": texts["en"],
        "summaries": texts,
    }


def score_drops(
    s: Session,
    journey: Journey,
    start: datetime,
    end: datetime,
    cfg: Settings,
    lang: str = "en",
    contacts: Sql | None = None,
) -> list[dict[str, Any]]:
    """Stages whose NPS or CSAT in ``[start, end)`` is significantly below the period before
    (only the answers of ``contacts``, a SELECT of contact ids, when given)."""
    if journey.subject != "contact":
        return []
    before = start - (end - start)
    answers, answer_params = answer_columns(s)
    scores, score_params = score_columns()
    only = f" AND i.contact_id IN ({contacts.text})" if contacts is not None else ""
    rows = s.rows(
        f"WITH x0 AS (SELECT i.contact_id, e.timestamp AS ts, {answers} FROM {RESOLVED_EVENTS} "
        f"WHERE e.type = 'track' AND e.timestamp >= ? AND e.timestamp < ?{only}), "
        f"x AS (SELECT contact_id, ts, {scores} FROM x0) "
        "SELECT se.stage, CASE WHEN x.ts >= ? THEN 1 ELSE 0 END, count(x.nps), "
        "sum(CASE WHEN x.nps >= 9 THEN 1 ELSE 0 END), sum(CASE WHEN x.nps <= 6 THEN 1 ELSE 0 END), "
        "count(x.csat), sum(CASE WHEN x.csat >= 4 THEN 1 ELSE 0 END) "
        "FROM x JOIN stage_entries se ON se.journey_key = ? AND se.contact_id = x.contact_id "
        "AND se.entered_at <= x.ts AND (se.left_at IS NULL OR se.left_at > x.ts) "
        "WHERE x.nps IS NOT NULL OR x.csat IS NOT NULL GROUP BY 1, 2",
        [
            *answer_params,
            before,
            end,
            *(contacts.params if contacts else []),
            *score_params,
            start,
            journey.key,
        ],
    )
    counts: dict[tuple[str, int], tuple[int, int, int, int, int]] = {
        (stage, int(now)): tuple(int(v or 0) for v in rest)  # type: ignore[misc]
        for stage, now, *rest in rows
    }
    names = {st.key: display(st.name, lang) for st in journey.stages}
    named = {st.key: {lg: display(st.name, lg) for lg in LANGS} for st in journey.stages}
    findings = []
    for stage in journey.stage_keys():
        then = counts.get((stage, 0), (0, 0, 0, 0, 0))
        now = counts.get((stage, 1), (0, 0, 0, 0, 0))
        link = f"/surveys?from={quote(start.isoformat())}&to={quote(end.isoformat())}"
        n1, p1, d1 = then[0], then[1], then[2]
        n2, p2, d2 = now[0], now[1], now[2]
        if n1 >= cfg.min_contacts and n2 >= cfg.min_contacts:
            nps1, nps2 = (p1 - d1) / n1, (p2 - d2) / n2
            var1 = p1 / n1 + d1 / n1 - nps1 * nps1
            var2 = p2 / n2 + d2 / n2 - nps2 * nps2
            se = math.sqrt(var1 / n1 + var2 / n2)
            z = tested((nps1 - nps2) / se if se > 0 else 0.0)
            if z >= cfg.min_z and nps1 - nps2 >= cfg.min_effect:
                findings.append(
                    _finding(
                        "score_drop",
                        where="NPS",
                        what=names[stage],
                        stage=stage,
                        z=z,
                        affected=n2 * (nps1 - nps2),
                        link=link,
                        evidence={
                            "nps_now": round(100 * nps2, 1),
                            "nps_before": round(100 * nps1, 1),
                            "answers_now": n2,
                            "answers_before": n1,
                        },
                        facts={
                            "metric": "NPS",
                            "stage": named[stage],
                            "now": 100 * nps2,
                            "before": 100 * nps1,
                        },
                    )
                )
        c1, s1, c2, s2 = then[3], then[4], now[3], now[4]
        if c1 >= cfg.min_contacts and c2 >= cfg.min_contacts:
            share1, share2 = s1 / c1, s2 / c2
            z = tested_z(s1, c1, s2, c2)
            if z >= cfg.min_z and share1 - share2 >= cfg.min_effect:
                findings.append(
                    _finding(
                        "score_drop",
                        where="CSAT",
                        what=names[stage],
                        stage=stage,
                        z=z,
                        affected=c2 * (share1 - share2),
                        link=link,
                        evidence={
                            "csat_now": round(100 * share2, 1),
                            "csat_before": round(100 * share1, 1),
                            "answers_now": c2,
                            "answers_before": c1,
                        },
                        facts={
                            "metric": "CSAT",
                            "stage": named[stage],
                            "now": 100 * share2,
                            "before": 100 * share1,
                        },
                    )
                )
    return findings


def frustration_spots(
    s: Session, journey: Journey, start: datetime, end: datetime, cfg: Settings, contacts: Sql | None = None
) -> list[dict[str, Any]]:
    """Clicked elements whose share of rage and dead clicks stands out from the rest of the site
    (only the clicks of ``contacts``, a SELECT of contact ids, when given)."""
    # From the typed copy of the clicks (store/clicks.py).
    clicks = (
        "SELECT c.page_path, c.selector, c.rage, c.dead, i.contact_id, c.timestamp AS ts FROM heatmap_clicks c "
        "JOIN identities i ON i.identity_id = c.identity_id WHERE c.timestamp >= ? AND c.timestamp < ?"
    )
    params: list[Any] = [start, end]
    if contacts is not None:
        clicks += f" AND i.contact_id IN ({contacts.text})"
        params += contacts.params
    rows = s.rows(
        "SELECT page_path, selector, count(*), sum(CASE WHEN rage OR dead THEN 1 ELSE 0 END), "
        "count(DISTINCT CASE WHEN rage OR dead THEN contact_id END), "
        "sum(CASE WHEN rage THEN 1 ELSE 0 END), sum(CASE WHEN dead THEN 1 ELSE 0 END) "
        f"FROM ({clicks}) c WHERE selector IS NOT NULL AND page_path IS NOT NULL GROUP BY 1, 2",
        params,
    )
    total = sum(int(r[2]) for r in rows)
    total_bad = sum(int(r[3] or 0) for r in rows)
    spots = []
    for page, selector, n, bad, people, rage, dead in rows:
        n, bad, people = int(n), int(bad or 0), int(people or 0)
        rest_n, rest_bad = total - n, total_bad - bad
        if people < cfg.min_contacts or rest_n < cfg.min_contacts:
            continue
        share, baseline = bad / n, rest_bad / rest_n
        z = tested_z(bad, n, rest_bad, rest_n)
        if z >= cfg.min_z and share - baseline >= cfg.min_effect:
            spots.append((page, selector, n, people, int(rage or 0), int(dead or 0), share, baseline, z))
    findings = []
    for page, selector, n, people, rage, dead, share, baseline, z in spots:
        stage = None
        if journey.subject == "contact":
            # The stage most of the frustrated clicks were made in.
            top = s.rows(
                f"SELECT se.stage, count(*) FROM ({clicks}) c JOIN stage_entries se ON se.journey_key = ? "
                "AND se.contact_id = c.contact_id AND se.entered_at <= c.ts AND (se.left_at IS NULL OR se.left_at > c.ts) "
                "WHERE c.page_path = ? AND c.selector = ? AND (c.rage OR c.dead) "
                "GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 1",
                [*params, journey.key, page, selector],
            )
            stage = top[0][0] if top else None
        findings.append(
            _finding(
                "frustration",
                where=page,
                what=selector,
                stage=stage,
                z=z,
                affected=people,
                link=f"/heatmaps?page={quote(page)}&from={quote(start.isoformat())}&to={quote(end.isoformat())}",
                evidence={
                    "clicks": n,
                    "rage_clicks": rage,
                    "dead_clicks": dead,
                    "frustrated_share": round(share, 4),
                    "site_share": round(baseline, 4),
                },
                facts={"page": page, "selector": selector, "share": share, "baseline": baseline},
            )
        )
    return findings
