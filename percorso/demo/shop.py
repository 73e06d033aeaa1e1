"""The demo shop: a few pages of Casa Aurora that load percorso.js from the percorso server, so a
newcomer can click around, get an on-site message, answer the NPS survey, and then find their own
visit on the dashboard. ``percorso demo`` serves it on its own port (another origin, as a real
shop would be); :func:`prepare_shop` stores what it needs (a write key for its origin, an
automation with an on-site message, an NPS survey)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from percorso.automation.definition import load_automation
from percorso.automation.store import save_automation
from percorso.feedback.definition import load_survey
from percorso.feedback.store import save_survey
from percorso.store import Store

PAGES = Path(__file__).parent / "shop"
PRODUCTS = [
    {
        "slug": "lampada-luna",
        "name": "Lampada Luna",
        "price": 89.0,
        "description": "Ottone e vetro soffiato.",
    },
    {
        "slug": "plaid-dolomiti",
        "name": "Plaid Dolomiti",
        "price": 59.0,
        "description": "Lana merino, 130 × 170 cm.",
    },
    {
        "slug": "tazze-aurora",
        "name": "Tazze Aurora (4)",
        "price": 34.0,
        "description": "Gres smaltato a mano.",
    },
]

#: Read the Club's terms on the shop and an on-site message explains them (the demo's own,
#: simpler cousin of the membership-explainer example: no history needed).
TERMS_NUDGE = """
key: shop-club-nudge
name: {en: "Shop: the Club explained", it: "Negozio: il Club spiegato"}
trigger: {page: /membership/termini*}
reentry: {cooldown: 1d}
steps:
  - id: explain
    name: {en: On-site message, it: Messaggio sul sito}
    onsite:
      title: Il Club in due minuti
      body: Consegna gratuita, vendite in anteprima, disdici quando vuoi.
      cta_text: Scopri il Club
      cta_url: /membership/termini
"""

NPS = """
key: nps-ordine
name: {en: "Would you recommend us?", it: "Ci consiglieresti?"}
stage: purchase
touchpoint: checkout
questions:
  - id: score
    kind: nps
    required: true
    text: {en: "How likely are you to recommend Casa Aurora to a friend?",
           it: "Quanto è probabile che consiglieresti Casa Aurora a un amico?"}
  - id: why
    kind: open
    text: {en: "What is the main reason for your score?", it: "Qual è il motivo principale del tuo voto?"}
target: {pages: ["/ordine/completato*"]}
show: {delay: 1}
"""


def prepare_shop(store: Store, shop_origins: str | list[str]) -> str:
    """Stores the shop's automation and survey, and returns a write key for its origins."""
    save_automation(store, load_automation(TERMS_NUDGE, "demo shop"), "demo shop", document=TERMS_NUDGE)
    save_survey(store, load_survey(NPS, "demo shop"), "demo shop")
    origins = [shop_origins] if isinstance(shop_origins, str) else shop_origins
    _, key = store.create_api_key("write", "demo shop", origins)
    return key


def shop_app(percorso_url: str, write_key: str, *, same_host: bool = False) -> FastAPI:
    """The shop's pages; each loads percorso.js from ``percorso_url``. With ``same_host`` (a shop
    listening on every interface) the pages load it from the name the browser reached the shop
    by, at percorso's port: a visitor on ``http://192.168.1.20:8001`` talks to
    ``http://192.168.1.20:8000``."""
    templates = Environment(loader=FileSystemLoader(PAGES), autoescape=select_autoescape(["html"]))
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    port = urlsplit(percorso_url).port

    def render(request: Request, name: str, title: str, **values: Any) -> HTMLResponse:
        host = percorso_url
        reached = request.url.hostname
        if same_host and reached:
            host = f"http://{f'[{reached}]' if ':' in reached else reached}:{port}"
        # Every page records clicks and scroll depth, so a newcomer finds their own visit on the
        # dashboard's heatmaps.
        load = {"host": host, "writeKey": write_key, "heatmaps": {"pages": ["*"]}}
        return HTMLResponse(templates.get_template(name).render(load=load, title=title, **values))

    @app.get("/")
    def home(request: Request) -> HTMLResponse:
        return render(request, "home.html", "Casa Aurora", products=PRODUCTS)

    @app.get("/prodotti/{slug}")
    def product(request: Request, slug: str) -> HTMLResponse:
        found = next((p for p in PRODUCTS if p["slug"] == slug), None)
        if found is None:
            return HTMLResponse("<p>Prodotto non trovato. <a href='/'>Casa Aurora</a></p>", status_code=404)
        return render(request, "product.html", str(found["name"]), product=found)

    @app.get("/carrello")
    def cart(request: Request) -> HTMLResponse:
        return render(request, "cart.html", "Carrello")

    @app.get("/checkout")
    def checkout(request: Request) -> HTMLResponse:
        return render(request, "checkout.html", "Pagamento")

    @app.get("/ordine/completato")
    def complete(request: Request) -> HTMLResponse:
        return render(request, "complete.html", "Ordine completato")

    @app.get("/registrati")
    def register(request: Request) -> HTMLResponse:
        return render(request, "register.html", "Registrati")

    @app.get("/membership/termini")
    def terms(request: Request) -> HTMLResponse:
        return render(request, "terms.html", "Il Club")

    return app
