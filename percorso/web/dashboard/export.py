"""The journey map as files to share: SVG (and PNG, which the browser rasterises from it), a
standalone HTML page, a printable PDF and the numbers as CSV — all from the same map data the
page shows, with the same filters."""

from __future__ import annotations

import csv
import io
import textwrap
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from fastapi import APIRouter, Request
from fastapi.responses import Response
from fpdf import FPDF
from fpdf.fonts import FontFace

from percorso.opportunities import OPEN
from percorso.spreadsheet import safe_row
from percorso.web.dashboard.filters import journey_filters
from percorso.web.dashboard.i18n import Translator
from percorso.web.dashboard.pages import cached_map
from percorso.web.dashboard.render import TEMPLATES, language
from percorso.web.dashboard.security import secure_headers
from percorso.web.dashboard.twins import Viewer

router = APIRouter(include_in_schema=False)

LABEL_W = 150
COL_W = 230
PAD = 10
LINE = 15
LANES = ("actions", "touchpoints", "emotion", "pain_points", "kpis", "opportunities")
# A Unicode font for the PDF where the system has one (Debian's fonts-dejavu-core); else the
# PDF's built-in Helvetica, which covers Latin-1 (Italian included) with a few substitutions.
PDF_FONTS = (
    Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
    Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"),
)


def _last_day(jmap: dict[str, Any]) -> datetime:
    # The period ends at midnight after its last day: files and titles name the last day, as the filters do.
    return datetime.fromisoformat(jmap["period"]["end"]) - timedelta(seconds=1)


def _filename(jmap: dict[str, Any], ext: str) -> str:
    persona = f"-{jmap['persona']['key']}" if jmap.get("persona") else ""
    last = _last_day(jmap).date().isoformat()
    return f"{jmap['journey']}{persona}-{jmap['period']['start'][:10]}-{last}.{ext}"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _ranked(pains: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(pains, key=lambda p: (p.get("rank") or 10**6, p.get("kind", "")))


def _attachment(content: bytes | str, media: str, filename: str) -> Response:
    response = Response(content, media_type=media)
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    secure_headers(response.headers)
    return response


def _wrap(text: str, width: int = 34, lines: int = 4) -> list[str]:
    out = textwrap.wrap(text, width=width) or [""]
    if len(out) > lines:
        out = [*out[: lines - 1], out[lines - 1][: width - 1] + "…"]
    return out


def _counted(jmap: dict[str, Any]) -> tuple[str, str]:
    """The message keys for what the map counts: contacts, or accounts in a journey that follows
    accounts (the KPI label, and "entered")."""
    if jmap.get("subject") == "account":
        return "kpi.accounts", "map.entered_accounts"
    return "kpi.contacts", "map.entered"


def _lane_lines(
    stage: dict[str, Any], lane: str, t: Translator, counted: str = "kpi.contacts"
) -> list[tuple[str, str]]:
    """The text lines of one cell as (css class, text)."""
    if lane == "actions":
        return [
            ("", f"{_cut(a.get('name') or t.action(a['action']), 28)}  {t.pct(a['share'], 0)}")
            for a in stage["top_actions"][:5]
        ] or [("muted", t("map.no_actions"))]
    if lane == "touchpoints":
        # shares that round to 0% say nothing on a drawing: left out
        rows = [
            ("", f"{_cut(tp['name'], 24)}  {t.pct(tp['share'], 0)}")
            for tp in stage["touchpoints"][:4]
            if tp["share"] >= 0.005
        ]
        channels = ", ".join(
            f"{c['channel']} {t.pct(c['share'], 0)}" for c in stage["channels"][:3] if c["share"] >= 0.005
        )
        return [*rows, ("muted", channels[:40])]
    if lane == "emotion":
        e = stage["emotion"]
        score = "–" if e["score"] is None else f"{e['score']:+.2f}"
        return [("big", score), ("muted", t("evidence." + e["evidence"]))]
    if lane == "pain_points":
        lines: list[tuple[str, str]] = []
        for p in _ranked(stage["pain_points"]):
            rank = f"#{p['rank']} " if p.get("rank") else ""
            wrapped = _wrap(f"{rank}{t('pain.' + p['kind'])}: {p['summary']}", 36, 3)
            lines += [("pain", w) for w in wrapped]
        return lines or [("muted", t("map.no_pains"))]
    if lane == "opportunities":
        planned = [
            ("", w)
            for o in stage.get("opportunities", [])
            for w in _wrap(
                f"• [{t('opp.status.' + o['status'])}] {o['title']}"
                + (f" — {o['owner']}" if o["owner"] else ""),
                36,
                3,
            )
        ]
        notes = [
            ("", w) for n in stage.get("notes", []) for w in _wrap(f"• {n['text']} — {n['author']}", 36, 3)
        ]
        reach = [
            ("muted", w)
            for p in _ranked(stage["pain_points"])
            if p.get("funnel") and p.get("step")
            for w in _wrap("• " + t("map.suggest_reach", step=p["step"]), 36, 2)
        ]
        return [*planned, *notes, *reach] or [("muted", "–")]
    kpis = [
        ("", f"{t(counted)}: {t.num(stage['contacts']['entered'])}"),
        ("", f"{t('kpi.conversion')}: {t.pct(stage['conversion_to_next'])}"),
        ("", f"{t('kpi.time')}: {t.duration(stage['time_in_stage']['median_seconds'])}"),
    ]
    for k in stage.get("kpis", []):
        value = t.kpi(k["metric"], k["value"], k.get("currency"))
        target = (
            f" / {t.kpi(k['metric'], k['target'], k.get('currency'))}" if k.get("target") is not None else ""
        )
        kind = "good" if k.get("on_target") else ("pain" if k.get("on_target") is False else "")
        kpis += [(kind, line) for line in _wrap(f"{k['name']}: {value}{target}", 36, 2)]
    return kpis


def map_svg(jmap: dict[str, Any], t: Translator) -> str:
    """A self-contained SVG drawing of the map (fonts are generic families; no external refs)."""
    stages = jmap["stages"]
    width = LABEL_W + COL_W * max(len(stages), 1)
    heights = {
        lane: PAD * 2
        + LINE * max((len(_lane_lines(s, lane, t, _counted(jmap)[0])) for s in stages), default=1)
        for lane in LANES
    }
    heights["emotion"] = 120
    head_h, title_h = 70, 50
    # Pain points no stage holds (a site-wide frustration, a score drop of the whole journey).
    unplaced = [
        line
        for p in _ranked(jmap.get("unplaced_pain_points", []))
        for line in _wrap(
            f"#{p.get('rank', '')} {t('pain.' + p['kind'])}: {p['summary']}",
            max(36, COL_W * len(stages) // 7),
            2,
        )
    ]
    unplaced_h = PAD * 2 + LINE * len(unplaced) if unplaced else 0
    height = title_h + head_h + sum(heights.values()) + unplaced_h + 10
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif" font-size="12">',
        "<style>.muted{fill:#667085}.big{font-size:18px;font-weight:bold}.pain{fill:#c4320a}.good{fill:#12805c}"
        ".lane{font-size:11px;font-weight:bold;fill:#667085}.head{font-size:15px;font-weight:bold}</style>",
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="{PAD}" y="28" font-size="20" font-weight="bold">{escape(t("map.title", journey=jmap["name"]))}</text>',
        f'<text x="{PAD}" y="44" class="muted">{escape(_subtitle(jmap, t))}</text>',
    ]
    y = title_h
    for k, s in enumerate(stages):
        x = LABEL_W + k * COL_W
        out.append(
            f'<rect x="{x}" y="{y}" width="{COL_W}" height="{head_h}" fill="#eef4ff" stroke="#e4e7ec"/>'
        )
        title = escape(_cut(f"{s['index']}. {s['name']}", 27))
        out.append(f'<text x="{x + PAD}" y="{y + 24}" class="head">{title}</text>')
        out.append(
            f'<text x="{x + PAD}" y="{y + 48}" class="big">{escape(t.num(s["contacts"]["entered"]))}</text>'
            f'<text x="{x + PAD + 80}" y="{y + 48}" class="muted">{escape(t("map.entered"))}</text>'
        )
    y += head_h
    for lane in LANES:
        h = heights[lane]
        out.append(f'<rect x="0" y="{y}" width="{LABEL_W}" height="{h}" fill="#fafbfc" stroke="#e4e7ec"/>')
        for i, line in enumerate(_wrap(t("lane." + lane).upper(), 18, 2)):
            out.append(f'<text x="{PAD}" y="{y + 20 + i * LINE}" class="lane">{escape(line)}</text>')
        for k, s in enumerate(stages):
            x = LABEL_W + k * COL_W
            out.append(f'<rect x="{x}" y="{y}" width="{COL_W}" height="{h}" fill="none" stroke="#e4e7ec"/>')
            if lane == "emotion":
                continue
            for i, (cls, text) in enumerate(_lane_lines(s, lane, t, _counted(jmap)[0])):
                attr = f" class={quoteattr(cls)}" if cls else ""
                out.append(f'<text x="{x + PAD}" y="{y + PAD + 12 + i * LINE}"{attr}>{escape(text)}</text>')
        if lane == "emotion":
            out.extend(_emotion_curve(stages, y, h, t))
        y += h
    if unplaced:
        out.append(
            f'<rect x="0" y="{y}" width="{width}" height="{unplaced_h}" fill="#fafbfc" stroke="#e4e7ec"/>'
        )
        for i, line in enumerate(_wrap(t("map.unplaced").upper(), 18, 2)):
            out.append(f'<text x="{PAD}" y="{y + 20 + i * LINE}" class="lane">{escape(line)}</text>')
        for i, text in enumerate(unplaced):
            out.append(
                f'<text x="{LABEL_W + PAD}" y="{y + PAD + 12 + i * LINE}" class="pain">{escape(text)}</text>'
            )
    out.append("</svg>")
    return "\n".join(out)


def _emotion_curve(stages: list[dict[str, Any]], y: int, h: int, t: Translator) -> list[str]:
    mid = y + h / 2
    amp = h / 2 - 22
    parts = [
        f'<line x1="{LABEL_W}" y1="{mid}" x2="{LABEL_W + COL_W * len(stages)}" y2="{mid}" '
        'stroke="#98a2b3" stroke-dasharray="4 4"/>'
    ]
    runs: list[list[str]] = [[]]  # the line joins neighbouring stages with feedback only
    for k, s in enumerate(stages):
        score = s["emotion"]["score"]
        cx = LABEL_W + k * COL_W + COL_W / 2
        label = t("evidence." + s["emotion"]["evidence"])
        parts.append(
            f'<text x="{cx}" y="{y + h - 6}" text-anchor="middle" class="muted">{escape(label)}</text>'
        )
        if score is None:
            runs.append([])
            continue
        cy = mid - float(score) * amp
        runs[-1].append(f"{cx:.1f},{cy:.1f}")
        parts.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="5" fill="#2f6fdf"/>')
        parts.append(f'<text x="{cx + 8:.1f}" y="{cy - 6:.1f}">{float(score):+.2f}</text>')
    for points in runs:
        if len(points) > 1:
            parts.insert(
                1, f'<polyline points="{" ".join(points)}" fill="none" stroke="#2f6fdf" stroke-width="2.5"/>'
            )
    return parts


def _subtitle(jmap: dict[str, Any], t: Translator) -> str:
    period = f"{t.date(jmap['period']['start'])} – {t.date(_last_day(jmap))}"
    persona = jmap["persona"]["name"] if jmap.get("persona") else t("filter.everyone")
    return f"{t('filter.persona')}: {persona} · {period}"


def map_csv(jmap: dict[str, Any]) -> str:
    """The map's numbers, a row per stage; no text cell can run as a spreadsheet formula."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        [
            "stage",
            "name",
            "entered",
            "now",
            "stuck",
            "conversion_to_next",
            "median_seconds_in_stage",
            "p90_seconds_in_stage",
            "emotion_score",
            "evidence",
            "nps",
            "nps_responses",
            "csat",
            "csat_responses",
            "pain_points",
            "top_action",
            "top_touchpoint",
            "open_opportunities",
        ]
    )
    for s in jmap["stages"]:
        e = s["emotion"]
        writer.writerow(
            safe_row(
                [
                    s["stage"],
                    s["name"],
                    s["contacts"]["entered"],
                    s["contacts"]["now"],
                    s["contacts"]["stuck"],
                    s["conversion_to_next"],
                    s["time_in_stage"]["median_seconds"],
                    s["time_in_stage"]["p90_seconds"],
                    e["score"],
                    e["evidence"],
                    e.get("nps"),
                    e.get("nps_responses"),
                    e.get("csat"),
                    e.get("csat_responses"),
                    len(s["pain_points"]),
                    s["top_actions"][0]["action"] if s["top_actions"] else "",
                    s["touchpoints"][0]["name"] if s["touchpoints"] else "",
                    sum(1 for o in s.get("opportunities", []) if o["status"] in OPEN),
                ]
            )
        )
    return buffer.getvalue()


def _pdf_fonts(pdf: FPDF) -> tuple[str, bool]:
    """The font family for the PDF and whether it covers Unicode."""
    regular, bold = PDF_FONTS
    if regular.exists() and bold.exists():
        pdf.add_font("DejaVu", "", str(regular))
        pdf.add_font("DejaVu", "B", str(bold))
        return "DejaVu", True
    return "Helvetica", False


def _pdf_latin1(text: str) -> str:
    # Helvetica covers Latin-1 (Italian included); map the few typographic characters we use
    # and mark anything else rather than fail.
    table = {"→": "->", "–": "-", "—": "-", "…": "...", "’": "'", "“": '"', "”": '"', "·": "-", "≥": ">="}
    for a, b in table.items():
        text = text.replace(a, b)
    return text.encode("latin-1", "replace").decode("latin-1")


def map_pdf(jmap: dict[str, Any], t: Translator) -> bytes:
    """An A3 landscape page per map: the lanes as a table, then every pain point with its evidence."""
    stages = jmap["stages"]
    pdf = FPDF(orientation="landscape", unit="mm", format="A3")
    family, unicode = _pdf_fonts(pdf)

    def _pdf_text(text: str) -> str:
        return text if unicode else _pdf_latin1(text)

    pdf.set_title(_pdf_text(t("map.title", journey=jmap["name"])))
    pdf.set_creator("percorso")
    pdf.set_auto_page_break(auto=True, margin=12)
    pdf.add_page()
    pdf.set_font(family, "B", 18)
    pdf.cell(0, 10, _pdf_text(t("map.title", journey=jmap["name"])), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(family, "", 10)
    pdf.set_text_color(102, 112, 133)
    pdf.cell(0, 6, _pdf_text(_subtitle(jmap, t)), new_x="LMARGIN", new_y="NEXT")
    pdf.set_text_color(29, 36, 51)
    pdf.ln(3)
    usable = pdf.w - pdf.l_margin - pdf.r_margin
    label_w = 36
    col_w = (usable - label_w) / max(len(stages), 1)
    pdf.set_font(family, "", 8.5)
    with pdf.table(
        col_widths=(label_w, *([col_w] * len(stages))),
        text_align="LEFT",
        line_height=4.2,
        first_row_as_headings=True,
        headings_style=FontFace(emphasis="BOLD", fill_color=(238, 244, 255)),
    ) as table:
        head = table.row()
        head.cell(_pdf_text(t("map.stage")))
        for s in stages:
            head.cell(
                _pdf_text(
                    f"{s['index']}. {s['name']}\n{t.num(s['contacts']['entered'])} {t(_counted(jmap)[1])}"
                )
            )
        for lane in LANES:
            row = table.row()
            row.cell(_pdf_text(t("lane." + lane)))
            for s in stages:
                row.cell(_pdf_text("\n".join(text for _, text in _lane_lines(s, lane, t, _counted(jmap)[0]))))
    pains = _ranked([p for s in stages for p in s["pain_points"]] + jmap.get("unplaced_pain_points", []))
    if pains:
        pdf.ln(4)
        pdf.set_font(family, "B", 13)
        pdf.cell(0, 8, _pdf_text(t("lane.pain_points")), new_x="LMARGIN", new_y="NEXT")
        pdf.set_font(family, "", 9)
        for p in pains:
            where = " · ".join(str(x) for x in (p.get("funnel_name"), p.get("step")) if x)
            line = (
                f"#{p.get('rank', '')} {t('pain.' + p['kind'])} — {p['summary']} ({where}); "
                f"{t('pain.affects_' + p.get('counted_in', 'contacts'))}: {t.num(p['contacts_affected'])}; z = {t.num(p['z'], 1)}"
            )
            pdf.multi_cell(0, 5, _pdf_text(line), new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


def _current_map(request: Request) -> tuple[Translator, dict[str, Any]]:
    """The reader's language and the map the page shows (the same cached result)."""
    t = Translator(language(request))
    jmap = cached_map(request, journey_filters(request), t.lang)
    notes = jmap.get("notes_by_stage") or {}
    planned = jmap.get("opportunities_by_stage") or {}
    # The opportunities lane: each stage's opportunities and notes beside it (a copy: the cached
    # map stays as it is).
    return t, {
        **jmap,
        "stages": [
            {**s, "notes": notes.get(s["stage"], []), "opportunities": planned.get(s["stage"], [])}
            for s in jmap["stages"]
        ],
    }


@router.get("/map/export.svg")
def export_svg(request: Request, session: Viewer) -> Response:
    t, jmap = _current_map(request)
    return _attachment(map_svg(jmap, t), "image/svg+xml", _filename(jmap, "svg"))


@router.get("/map/export.csv")
def export_csv(request: Request, session: Viewer) -> Response:
    _, jmap = _current_map(request)
    return _attachment(map_csv(jmap), "text/csv; charset=utf-8", _filename(jmap, "csv"))


@router.get("/map/export.pdf")
def export_pdf(request: Request, session: Viewer) -> Response:
    t, jmap = _current_map(request)
    return _attachment(map_pdf(jmap, t), "application/pdf", _filename(jmap, "pdf"))


@router.get("/map/export.html")
def export_html(request: Request, session: Viewer) -> Response:
    """One file that opens anywhere, offline: the drawing, the numbers and the pain points."""
    t, jmap = _current_map(request)
    css = (Path(__file__).parent.parent / "static" / "app.css").read_text(encoding="utf-8")
    body = TEMPLATES.get_template("map_export.html").render(
        m=jmap, t=t, lang=t.lang, svg=map_svg(jmap, t), css=css, subtitle=_subtitle(jmap, t)
    )
    return _attachment(body, "text/html; charset=utf-8", _filename(jmap, "html"))
