"""A realistic, deterministic customer dataset for ``percorso demo`` and the benchmarks.

Six months of *Casa Aurora*, a fictional Italian home-goods retailer that sells online, in an app
and in four shops. Every person walks their own journey — awareness through an ad, a search or a
friend; browsing; registration (and sometimes not confirming it); carts, checkouts and orders;
e-mails, shop visits, calls to the contact centre, support tickets, NPS surveys, reviews — and the
data carries the pain points a real shop has: payment failures in the app, registrations left
unconfirmed, long waits on the phone about deliveries.

Everything is a Segment message, so the demo travels the same path as production traffic. The
same ``DemoSpec`` always gives the same messages (messageIds included), so loading it twice
stores nothing twice.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

SITE = "https://www.casa-aurora.it"
DAY = 86_400.0
HOUR = 3_600.0

FIRST_NAMES = [
    "Giulia",
    "Francesca",
    "Chiara",
    "Sara",
    "Martina",
    "Valentina",
    "Elena",
    "Alessia",
    "Federica",
    "Silvia",
    "Laura",
    "Paola",
    "Marco",
    "Luca",
    "Andrea",
    "Matteo",
    "Davide",
    "Alessandro",
    "Simone",
    "Lorenzo",
    "Stefano",
    "Paolo",
    "Giovanni",
    "Riccardo",
]
LAST_NAMES = [
    "Rossi",
    "Russo",
    "Ferrari",
    "Esposito",
    "Bianchi",
    "Romano",
    "Colombo",
    "Ricci",
    "Marino",
    "Greco",
    "Bruno",
    "Gallo",
    "Conti",
    "DeLuca",
    "Mancini",
    "Costa",
    "Giordano",
    "Rizzo",
    "Lombardi",
    "Moretti",
    "Barbieri",
    "Fontana",
    "Santoro",
    "Mariani",
]
CITIES = ("Milano", "Roma", "Torino", "Bologna", "Napoli", "Firenze", "Verona", "Bari", "Padova", "Genova")
STORES = ("Milano Duomo", "Roma Prati", "Torino Centro", "Bologna Maggiore")
PRODUCTS = (
    ("P-101", "Moka Express 6 tazze", "cucina", 39.0),
    ("P-102", "Set pentole antiaderenti", "cucina", 129.0),
    ("P-103", "Tazzine espresso (6)", "cucina", 24.0),
    ("P-201", "Tovaglia in lino", "tavola", 59.0),
    ("P-202", "Piatti in gres (12)", "tavola", 89.0),
    ("P-301", "Piumone 4 stagioni", "camera", 149.0),
    ("P-302", "Lenzuola in percalle", "camera", 79.0),
    ("P-401", "Lampada da tavolo Arco", "living", 119.0),
    ("P-402", "Cuscino in velluto", "living", 29.0),
    ("P-403", "Vaso in ceramica", "living", 45.0),
)
CATEGORIES = ("cucina", "tavola", "camera", "living")
WEB_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.0 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/130.0 Mobile Safari/537.36",
)
# How people first hear of the shop: (campaign source, medium, campaign name, referrer) — a
# campaign, an organic referrer, or nothing at all (typed the address).
ACQUISITION = (
    (("google", "cpc", "brand-search", "https://www.google.com/"), 18),
    (("facebook", "paid-social", "autunno-casa", "https://www.facebook.com/"), 14),
    (("instagram", "social", "", "https://www.instagram.com/"), 10),
    ((None, None, None, "https://www.google.it/"), 24),
    ((None, None, None, "https://www.cosedicasa.com/articoli/tavola"), 6),
    ((None, None, None, ""), 28),
)

# The personas walk different journeys; weights are shares of the population.
PERSONAS = (
    ("browser", 35),
    ("first_time_buyer", 25),
    ("repeat_customer", 20),
    ("loyal_member", 10),
    ("shop_first", 10),
)


# Problems the generator can plant, each one a kind of pain point percorso should find.
PROBLEMS = {
    "app_payment_failures": "payments fail seven times as often in the app (drop-off at payment, ios and android)",
    "checkout_loop": "on the website, shoppers bounce between checkout and cart (shipping costs shown late)",
    "confirmation_outage": "registration confirmation e-mails mostly not arriving for three weeks",
    "slow_android_checkout": "the Android app's checkout is very slow between starting and paying",
    "delivery_calls": "orders are followed by calls to the contact centre about delivery",
}
OUTAGE_WEEKS = (10, 7)  # confirmation_outage: from 10 to 7 weeks before the last day
CONSENT_PERCENT = 70  # customers who tick "send me news and offers" when they register


def marketing_consent(seed: int, index: int) -> bool:
    """Whether person ``index`` agreed to marketing e-mails when registering. A hash, not the
    person's random stream, so adding it changed no other value of the dataset."""
    digest = hashlib.sha256(f"percorso-demo-consent:{seed}:{index}".encode()).digest()
    return digest[0] * 100 < CONSENT_PERCENT * 256


#: What the shop's customers write beside their score, by its side (unhappy, neutral, happy).
COMMENTS = {
    "low": (
        "La consegna è arrivata con una settimana di ritardo e nessuno mi ha avvisato.",
        "Ho dovuto chiamare due volte il servizio clienti per sapere dov'era il pacco.",
        "Il pagamento con la carta è fallito tre volte prima di andare a buon fine.",
        "Il divano è bello ma il montaggio non era compreso, e non era scritto da nessuna parte.",
    ),
    "mid": (
        "Prodotti belli, ma i tempi di consegna andrebbero chiariti prima dell'acquisto.",
        "Tutto bene, anche se il sito da telefono è un po' lento.",
        "Buona qualità, prezzi un po' alti rispetto ad altri negozi.",
    ),
    "high": (
        "Consegna puntuale e il corriere è stato gentilissimo.",
        "La lampada è ancora più bella dal vivo. Tornerò sicuramente!",
        "Servizio clienti rapido e cortese, mi hanno aiutato a scegliere il colore.",
    ),
}


@dataclass(frozen=True)
class DemoSpec:
    contacts: int = 20_000
    seed: int = 7
    days: int = 183
    end: datetime | None = None  # the last day of data; default: today (UTC midnight)
    problems: frozenset[str] = frozenset(PROBLEMS)  # frozenset() gives a clean shop

    def end_ts(self) -> float:
        end = self.end or datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        return end.timestamp()

    def start_ts(self) -> float:
        return self.end_ts() - self.days * DAY


@dataclass(frozen=True)
class DemoStory:
    """A person planted in the dataset whose journey shows one of the automation examples."""

    key: str
    description: str
    email: str | None
    user_id: str | None
    anonymous_id: str


STORY_KEYS = ("registered_not_confirmed", "abandoned_registration", "loyal_membership_reader")
STORY_TEXT = {
    "registered_not_confirmed": "registered three days ago and never confirmed the e-mail address",
    "abandoned_registration": "newsletter subscriber who started creating an account and gave up",
    "loyal_membership_reader": "loyal customer who keeps reading the membership terms without joining",
}


def _story_index(spec: DemoSpec, key: str) -> int:
    """Where each story's person sits: spread out in the population, stable for a spec."""
    return (STORY_KEYS.index(key) * max(spec.contacts // 3, 1) + 1) % max(spec.contacts, 1)


class _Person:
    """One person's identifiers, traits and the messages of their journey."""

    def __init__(self, spec: DemoSpec, index: int) -> None:
        self.spec = spec
        self.index = index
        self.rng = random.Random(f"percorso-demo:{spec.seed}:{index}")
        rng = self.rng
        self.anonymous_id = f"{rng.getrandbits(128):032x}"
        self.anonymous_id = "-".join(
            (
                self.anonymous_id[:8],
                self.anonymous_id[8:12],
                self.anonymous_id[12:16],
                self.anonymous_id[16:20],
                self.anonymous_id[20:],
            )
        )
        self.user_id = f"cus_{index:06d}"
        self.first_name = rng.choice(FIRST_NAMES)
        self.last_name = rng.choice(LAST_NAMES)
        self.email = f"{self.first_name}.{self.last_name}{index}@example.it".lower()
        self.city = rng.choice(CITIES)
        self.age = rng.randint(19, 74)
        self.persona = _weighted(rng, PERSONAS)
        self.app_user = rng.random() < 0.3
        self.platform = rng.choice(("ios", "android"))
        self.agent = rng.choice(WEB_AGENTS)
        self.ip = f"198.51.100.{rng.randint(1, 254)}"
        self.acquisition = _weighted(rng, ACQUISITION)
        self.messages: list[dict[str, Any]] = []
        self.known = False  # whether the userId is in use yet
        self.email_known = False
        self.consent = marketing_consent(spec.seed, index)
        self.landing = True

    # -- message builders -----------------------------------------------------------------

    def _base(self, kind: str, ts: float, **fields: Any) -> dict[str, Any]:
        message: dict[str, Any] = {
            "type": kind,
            "messageId": f"demo-{self.spec.seed}-{self.index:07d}-{len(self.messages):04d}",
            "timestamp": _iso(ts),
        }
        if self.known:
            message["userId"] = self.user_id
        message.update(fields)
        self.messages.append(message)
        return message

    def _web_context(self, path: str, title: str) -> dict[str, Any]:
        context: dict[str, Any] = {
            "library": {"name": "analytics.js", "version": "5.2.0"},
            "page": {"path": path, "url": SITE + path, "title": title, "referrer": f"{SITE}/"},
            "userAgent": self.agent,
            "ip": self.ip,
            "locale": "it-IT",
        }
        if self.landing:
            self.landing = False
            source, medium, campaign, referrer = self.acquisition
            context["page"]["referrer"] = referrer
            if source:
                context["campaign"] = {"source": source, "medium": medium, "name": campaign}
                context["page"]["url"] += f"?utm_source={source}&utm_medium={medium}&utm_campaign={campaign}"
        return context

    def page(self, ts: float, path: str, title: str, name: str | None = None) -> None:
        self._base(
            "page",
            ts,
            anonymousId=self.anonymous_id,
            name=name or title,
            properties={"path": path, "title": title, "url": SITE + path},
            context=self._web_context(path, title),
        )

    def web_track(self, ts: float, event: str, path: str, properties: dict[str, Any] | None = None) -> None:
        self._base(
            "track",
            ts,
            anonymousId=self.anonymous_id,
            event=event,
            properties=properties or {},
            context=self._web_context(path, event),
        )

    def app_context(self) -> dict[str, Any]:
        library = "analytics-ios" if self.platform == "ios" else "analytics-android"
        return {
            "library": {"name": library, "version": "4.5.0"},
            "app": {"name": "Casa Aurora", "version": "3.8.1"},
            "os": {"name": "iOS" if self.platform == "ios" else "Android"},
            "ip": self.ip,
            "locale": "it-IT",
        }

    def screen(self, ts: float, name: str, properties: dict[str, Any] | None = None) -> None:
        self._base(
            "screen",
            ts,
            anonymousId=self.anonymous_id,
            name=name,
            properties=properties or {},
            context=self.app_context(),
        )

    def app_track(self, ts: float, event: str, properties: dict[str, Any] | None = None) -> None:
        self._base(
            "track",
            ts,
            anonymousId=self.anonymous_id,
            event=event,
            properties=properties or {},
            context=self.app_context(),
        )

    def offline(self, ts: float, channel: str, event: str, properties: dict[str, Any]) -> None:
        """A touchpoint imported from a shop till, the contact centre or the help desk."""
        message = self._base(
            "track",
            ts,
            event=event,
            properties=properties,
            context={"channel": channel, "library": {"name": "percorso-import"}},
        )
        if "userId" not in message:
            message["userId"] = self.user_id

    def email_event(self, ts: float, event: str, campaign: str) -> None:
        """Delivery events from the e-mail service provider (known people only)."""
        self._base(
            "track",
            ts,
            event=event,
            properties={"campaign_name": campaign, "email_subject": campaign.replace("-", " ").capitalize()},
            context={
                "library": {"name": "percorso-email"},
                "traits": {"email": self.email},
                "campaign": {"source": "percorso", "medium": "email", "name": campaign},
            },
        )

    def identify(
        self, ts: float, *, with_user: bool = True, channel_context: dict[str, Any] | None = None
    ) -> None:
        # Newsletter subscribers (no account) asked for e-mails; customers chose at registration.
        traits: dict[str, Any] = {"email": self.email, "marketing_consent": self.consent or not with_user}
        if with_user:
            self.known = True
            traits.update(
                firstName=self.first_name, lastName=self.last_name, city=self.city, age=self.age, country="IT"
            )
        self.email_known = True
        fields: dict[str, Any] = {"traits": traits}
        if channel_context is None:
            fields["anonymousId"] = self.anonymous_id
            fields["context"] = {
                "library": {"name": "analytics.js", "version": "5.2.0"},
                "ip": self.ip,
                "locale": "it-IT",
            }
        else:
            fields["context"] = channel_context
            if not with_user:
                fields["anonymousId"] = self.anonymous_id
        self._base("identify", ts, **fields)
        if with_user and "userId" not in self.messages[-1]:
            self.messages[-1]["userId"] = self.user_id

    # -- journey pieces -------------------------------------------------------------------

    def browse(self, ts: float, pages: int) -> float:
        """A web (or app) session looking at categories and products; returns when it ended."""
        rng = self.rng
        in_app = self.app_user and self.known and rng.random() < 0.6
        if in_app:
            self.app_track(ts, "Application Opened", {"from_background": rng.random() < 0.5})
        elif rng.random() < 0.5 or self.landing:
            self.page(ts, "/", "Casa Aurora — casa e cucina", "Home")
        for _ in range(pages):
            ts += rng.uniform(15, 140)
            category = rng.choice(CATEGORIES)
            if rng.random() < 0.35:
                if in_app:
                    self.screen(ts, "Category", {"category": category})
                else:
                    self.page(ts, f"/c/{category}", category.capitalize(), "Category")
            else:
                sku, name, cat, price = rng.choice(PRODUCTS)
                props = {"product_id": sku, "name": name, "category": cat, "price": price, "currency": "EUR"}
                if in_app:
                    self.app_track(ts, "Product Viewed", props)
                else:
                    self.web_track(ts, "Product Viewed", f"/p/{sku}", props)
        return ts

    def buy_online(self, ts: float, order_no: int, conversion: float) -> tuple[float, bool]:
        """Cart to order, with the drop-offs a real checkout has. Returns (end, ordered)."""
        rng = self.rng
        in_app = self.app_user and self.known and rng.random() < 0.5
        items = [rng.choice(PRODUCTS) for _ in range(rng.choice((1, 1, 1, 2, 2, 3)))]
        total = round(sum(p[3] for p in items), 2)

        def step(event: str, path: str, props: dict[str, Any]) -> None:
            nonlocal ts
            ts += rng.uniform(20, 240)
            if in_app:
                self.app_track(ts, event, props)
            else:
                self.web_track(ts, event, path, props)

        for sku, name, cat, price in items:
            step(
                "Product Added",
                f"/p/{sku}",
                {"product_id": sku, "name": name, "category": cat, "price": price, "quantity": 1},
            )
        if rng.random() > 0.55 + 0.4 * conversion:
            return ts, False  # abandoned the cart
        step("Checkout Started", "/checkout", {"value": total, "currency": "EUR", "products": len(items)})
        step("Checkout Step Completed", "/checkout/spedizione", {"step": 1, "step_name": "shipping"})
        # The app's payment page is the shop's known pain point: more failures, more drop-off.
        problems = self.spec.problems
        fail_rate = (0.35 if in_app else 0.05) if "app_payment_failures" in problems else 0.0
        if "checkout_loop" in problems and not in_app and rng.random() < 0.3:
            # Shipping costs appear at checkout: back to the cart, then checkout again.
            sku, name, cat, price = rng.choice(PRODUCTS)
            step(
                "Product Added",
                f"/p/{sku}",
                {"product_id": sku, "name": name, "category": cat, "price": price},
            )
            step(
                "Checkout Started",
                "/checkout",
                {"value": total + price, "currency": "EUR", "products": len(items) + 1},
            )
        if "slow_android_checkout" in problems and in_app and self.platform == "android":
            ts += rng.uniform(900, 2400)  # the shipping step hangs
        if rng.random() < fail_rate:
            step(
                "Payment Failed",
                "/checkout/pagamento",
                {"reason": rng.choice(("3ds_timeout", "card_declined", "3ds_timeout"))},
            )
            if rng.random() < 0.75:
                return ts, False
        elif rng.random() > 0.7 + 0.3 * conversion:
            return ts, False
        step(
            "Payment Info Entered",
            "/checkout/pagamento",
            {"payment_method": rng.choice(("card", "card", "paypal", "satispay"))},
        )
        step(
            "Order Completed",
            "/checkout/grazie",
            {
                "order_id": f"W{self.index:06d}-{order_no}",
                "revenue": total,
                "currency": "EUR",
                "products": [{"product_id": p[0], "name": p[1], "price": p[3]} for p in items],
            },
        )
        return ts, True

    def register(self, ts: float, confirm: float) -> float:
        """Registration: start, submit (identify), and confirm by e-mail with probability ``confirm``."""
        rng = self.rng
        self.page(ts, "/registrati", "Crea il tuo account", "Registration")
        ts += rng.uniform(5, 30)
        self.web_track(ts, "Registration Started", "/registrati", {"method": "email"})
        ts += rng.uniform(40, 200)
        self.identify(ts)
        ts += 1
        self.web_track(ts, "Registration Submitted", "/registrati", {"method": "email"})
        self.email_event(ts + 20, "Email Delivered", "conferma-registrazione")
        end = self.spec.end_ts()
        if "confirmation_outage" in self.spec.problems and (
            end - OUTAGE_WEEKS[0] * 7 * DAY <= ts < end - OUTAGE_WEEKS[1] * 7 * DAY
        ):
            confirm *= 0.15  # the e-mails were not delivered
        if rng.random() < confirm:
            delay = rng.choice((rng.uniform(60, 900), rng.uniform(60, 900), rng.uniform(HOUR, 2 * DAY)))
            self.email_event(ts + delay - 30, "Email Opened", "conferma-registrazione")
            ts += delay
            self.web_track(ts, "Registration Confirmed", "/registrati/confermato", {"method": "email"})
        return ts

    def survey(self, ts: float, satisfied: float) -> None:
        score = min(10, max(0, round(self.rng.gauss(6 + 3.5 * satisfied, 1.8))))
        answer: dict[str, Any] = {"survey": "nps", "score": score, "question": "Consiglieresti Casa Aurora?"}
        # About one answer in three leaves a comment. Drawn from its own generator, seeded by the
        # contact and the moment, so the rest of the shop stays what it was without comments.
        words = random.Random(f"{self.user_id}-{ts:.0f}")
        if words.random() < 0.35:
            side = COMMENTS["low" if score <= 6 else "high" if score >= 9 else "mid"]
            answer["comment"] = words.choice(side)
        self.offline(ts, "survey", "Survey Responded", answer)

    def call(self, ts: float, reason: str) -> None:
        rng = self.rng
        wait = rng.uniform(400, 1500) if reason == "consegna" else rng.uniform(30, 300)
        self.offline(
            ts,
            "call-center",
            "Call Completed",
            {"reason": reason, "wait_seconds": round(wait), "duration_seconds": round(rng.uniform(120, 900))},
        )

    def ticket(self, ts: float) -> float:
        rng = self.rng
        topic = rng.choice(("reso", "prodotto danneggiato", "fattura", "consegna in ritardo"))
        ticket_id = f"T{self.index:06d}-{len(self.messages)}"
        self.offline(ts, "support", "Ticket Opened", {"ticket_id": ticket_id, "topic": topic})
        hours = rng.uniform(2, 30) if topic != "consegna in ritardo" else rng.uniform(24, 120)
        ts += hours * HOUR
        self.offline(
            ts,
            "support",
            "Ticket Resolved",
            {"ticket_id": ticket_id, "topic": topic, "resolution_hours": round(hours, 1)},
        )
        return ts

    def shop_visit(self, ts: float, order_no: int, buys: bool) -> None:
        rng = self.rng
        store = STORES[self.index % len(STORES)] if rng.random() < 0.8 else rng.choice(STORES)
        self.offline(ts, "store", "Store Visited", {"store": store})
        if buys:
            items = [rng.choice(PRODUCTS) for _ in range(rng.choice((1, 1, 2, 3)))]
            self.offline(
                ts + rng.uniform(300, 1800),
                "store",
                "Order Completed",
                {
                    "order_id": f"S{self.index:06d}-{order_no}",
                    "revenue": round(sum(p[3] for p in items), 2),
                    "currency": "EUR",
                    "store": store,
                    "products": [{"product_id": p[0], "name": p[1], "price": p[3]} for p in items],
                },
            )

    # -- whole journeys -------------------------------------------------------------------

    def walk(self) -> list[dict[str, Any]]:
        spec, rng = self.spec, self.rng
        start, end = spec.start_ts(), spec.end_ts()
        t = start + rng.random() * (end - start) * 0.9  # first touch: any time but the last weeks
        t = _daytime(rng, t)
        persona = self.persona
        if persona == "shop_first":
            self._shop_first(t, end)
        else:
            self._online(t, end, persona)
        return self._finished()

    def _online(self, t: float, end: float, persona: str) -> None:
        rng = self.rng
        orders_wanted = {
            "browser": 0,
            "first_time_buyer": 1,
            "repeat_customer": rng.randint(2, 5),
            "loyal_member": rng.randint(4, 9),
        }[persona]
        conversion = 0.0 if persona == "browser" else 0.8
        gap = {"browser": 6.0, "first_time_buyer": 4.0, "repeat_customer": 9.0, "loyal_member": 7.0}[persona]
        # Awareness and consideration: a few anonymous sessions.
        for _ in range(rng.randint(2, 5)):
            t = self.browse(t, rng.randint(3, 8))
            t = _daytime(rng, t + rng.expovariate(1 / (gap * DAY)))
            if t >= end:
                return
        if persona == "browser":
            if rng.random() < 0.15:  # starts creating an account, at the point buyers register, and gives up
                self.page(t + 30, "/registrati", "Crea il tuo account", "Registration")
                self.web_track(t + 40, "Registration Started", "/registrati", {"method": "email"})
                t += 60
            if rng.random() < 0.3:  # subscribes to the newsletter
                self.identify(t, with_user=False)
                self.web_track(t + 1, "Newsletter Subscribed", "/", {"list": "novita"})
                self._newsletter(t, end, rng.randint(1, 4))
            return
        confirm = 0.85
        t = self.register(t + rng.uniform(30, 300), confirm)
        orders = 0
        attempts = 0
        while orders < orders_wanted and attempts < orders_wanted * 3 and t < end:
            attempts += 1
            t = _daytime(rng, t + rng.expovariate(1 / (gap * DAY)))
            if t >= end:
                break
            t = self.browse(t, rng.randint(2, 7))
            t, ordered = self.buy_online(t, orders, conversion)
            if ordered:
                orders += 1
                t = self._after_order(t, orders, persona)
            elif rng.random() < 0.5:
                self.email_event(t + 3 * HOUR, "Email Delivered", "carrello-abbandonato")
                if rng.random() < 0.4:
                    self.email_event(t + 5 * HOUR, "Email Opened", "carrello-abbandonato")
        t = self._newsletter(t, end, rng.randint(0, 3))
        if persona == "loyal_member" and t < end:
            self._membership(t, end)

    def _after_order(self, t: float, orders: int, persona: str) -> float:
        rng = self.rng
        self.email_event(t + 60, "Email Delivered", "conferma-ordine")
        delivered = t + rng.uniform(2, 6) * DAY
        if "delivery_calls" in self.spec.problems and rng.random() < 0.25:
            self.call(t + rng.uniform(0.3, 1.8) * DAY, "consegna")
        if rng.random() < 0.08:
            delivered = self.ticket(delivered + rng.uniform(HOUR, DAY))
        if rng.random() < 0.35:
            self.survey(delivered + rng.uniform(DAY, 3 * DAY), 0.9 if persona == "loyal_member" else 0.55)
        if orders >= 2 and rng.random() < 0.25:
            sku, _, _, _ = rng.choice(PRODUCTS)
            self.web_track(
                delivered + rng.uniform(DAY, 5 * DAY),
                "Product Reviewed",
                f"/p/{sku}",
                {"product_id": sku, "rating": rng.choice((4, 5, 5, 3))},
            )
        if persona == "loyal_member" and orders >= 3 and rng.random() < 0.3:
            self.web_track(
                delivered + 2 * DAY, "Referral Sent", "/invita", {"method": rng.choice(("whatsapp", "email"))}
            )
        if self.app_user and orders == 1:
            self.app_track(delivered, "Application Installed", {"version": "3.8.1"})
        return delivered

    def _newsletter(self, t: float, end: float, count: int) -> float:
        rng = self.rng
        for n in range(count):
            t = t + rng.uniform(5, 15) * DAY
            if t >= end:
                break
            campaign = rng.choice(("novita-autunno", "saldi-casa", "idee-regalo", "ricette-moka"))
            self.email_event(t, "Email Delivered", campaign)
            if rng.random() < 0.45:
                self.email_event(t + rng.uniform(600, 6 * HOUR), "Email Opened", campaign)
                if rng.random() < 0.3:
                    self.email_event(t + rng.uniform(6 * HOUR, 7 * HOUR), "Email Link Clicked", campaign)
                    self.landing = n % 2 == 0
                    self.acquisition = ("newsletter", "email", campaign, "")
                    self.browse(t + 7 * HOUR + 60, rng.randint(1, 3))
        return t

    def _membership(self, t: float, end: float) -> None:
        """Loyal customers weigh the paid membership: most join after reading the terms once or twice."""
        rng = self.rng
        reads = rng.randint(1, 5)
        for _ in range(reads):
            t = _daytime(rng, t + rng.uniform(1, 8) * DAY)
            if t >= end:
                return
            self.page(t, "/membership/termini", "Casa Aurora Club — termini", "Membership Terms")
        if reads <= 3 and rng.random() < 0.7:
            self.web_track(
                t + rng.uniform(60, 600),
                "Membership Confirmed",
                "/membership",
                {"plan": "club-annuale", "price": 29.0},
            )

    def _shop_first(self, t: float, end: float) -> None:
        """People who know the shop from its windows: till purchases with a loyalty card, calls, a few web visits."""
        rng = self.rng
        self.known = True
        self.identify(t, channel_context={"channel": "store", "library": {"name": "percorso-import"}})
        for order_no in range(rng.randint(1, 5)):
            self.shop_visit(t + 60, order_no, buys=rng.random() < 0.75)
            if rng.random() < 0.2:
                self.call(t + rng.uniform(1, 10) * DAY, rng.choice(("orari", "disponibilita", "consegna")))
            if rng.random() < 0.3:
                self.survey(t + rng.uniform(1, 4) * DAY, 0.75)
            if rng.random() < 0.3:  # looks the shop up online; the site knows them after login
                self.browse(t + rng.uniform(1, 6) * DAY, rng.randint(1, 4))
            t = _daytime(rng, t + rng.expovariate(1 / (20 * DAY)))
            if t >= end:
                break
        self._newsletter(t, end, rng.randint(0, 2))

    def _finished(self) -> list[dict[str, Any]]:
        """Oldest first, and nothing after the spec's last day (deliveries and surveys run on)."""
        last = _iso(self.spec.end_ts())
        self.messages.sort(key=lambda m: m["timestamp"])
        return [m for m in self.messages if m["timestamp"] <= last]

    # -- planted stories ------------------------------------------------------------------

    def story(self, key: str) -> list[dict[str, Any]]:
        rng = self.rng
        end = self.spec.end_ts()
        self.persona = "story"
        self.consent = True  # so every example automation can reach them
        if key == "registered_not_confirmed":
            self.acquisition = ("instagram", "social", "autunno-casa", "https://www.instagram.com/")
            # registers three days before the end: inside the days `percorso demo` replays
            # through the automations, with time for the reminder and the follow-up
            t = end - 5 * DAY + 10 * HOUR
            t = self.browse(t, 4)
            t = self.browse(t + DAY, 3)
            self.register(t + DAY, confirm=0.0)
        elif key == "abandoned_registration":
            self.acquisition = (None, None, None, "https://www.google.it/")
            t = end - 40 * DAY + 11 * HOUR
            t = self.browse(t, 3)
            self.identify(t + 30, with_user=False)
            self.web_track(t + 31, "Newsletter Subscribed", "/", {"list": "novita"})
            t = self._newsletter(t, end - 5 * DAY, 2)
            t = end - 3 * DAY + 19 * HOUR
            self.acquisition = ("newsletter", "email", "saldi-casa", "")
            self.landing = True
            t = self.browse(t, 2)
            self.page(t + 20, "/registrati", "Crea il tuo account", "Registration")
            self.web_track(t + 45, "Registration Started", "/registrati", {"method": "email"})
        else:
            self.app_user = False
            t = self.spec.start_ts() + 5 * DAY + 10 * HOUR
            t = self.browse(t, 3)
            t = self.register(t + 120, confirm=1.0)
            for order_no in range(5):
                t = self.browse(t + rng.uniform(10, 20) * DAY, 2)
                t, _ = self.buy_online_always(t, order_no)
            for day in (12, 9, 6, 4, 2):
                self.page(
                    end - day * DAY + 21 * HOUR,
                    "/membership/termini",
                    "Casa Aurora Club — termini",
                    "Membership Terms",
                )
        return self._finished()

    def buy_online_always(self, t: float, order_no: int) -> tuple[float, bool]:
        sku, name, cat, price = PRODUCTS[order_no % len(PRODUCTS)]
        for event, path, props in (
            (
                "Product Added",
                f"/p/{sku}",
                {"product_id": sku, "name": name, "category": cat, "price": price, "quantity": 1},
            ),
            ("Checkout Started", "/checkout", {"value": price, "currency": "EUR", "products": 1}),
            ("Payment Info Entered", "/checkout/pagamento", {"payment_method": "card"}),
            (
                "Order Completed",
                "/checkout/grazie",
                {"order_id": f"W{self.index:06d}-{order_no}", "revenue": price, "currency": "EUR"},
            ),
        ):
            t += self.rng.uniform(30, 120)
            self.web_track(t, event, path, props)
        return t, True


def generate(spec: DemoSpec) -> Iterator[list[dict[str, Any]]]:
    """Each person's Segment messages, oldest first, person by person."""
    planted = {_story_index(spec, key): key for key in STORY_KEYS} if spec.contacts >= len(STORY_KEYS) else {}
    for index in range(spec.contacts):
        person = _Person(spec, index)
        key = planted.get(index)
        yield person.story(key) if key else person.walk()


def stories(spec: DemoSpec) -> list[DemoStory]:
    """The planted people, to start exploring from."""
    found: list[DemoStory] = []
    if spec.contacts < len(STORY_KEYS):
        return found
    for key in STORY_KEYS:
        person = _Person(spec, _story_index(spec, key))
        known = key != "abandoned_registration"
        found.append(
            DemoStory(
                key=key,
                description=f"{person.first_name} {person.last_name}: {STORY_TEXT[key]}",
                email=person.email,
                user_id=person.user_id if known else None,
                anonymous_id=person.anonymous_id,
            )
        )
    return found


def _weighted(rng: random.Random, options: tuple[tuple[Any, int], ...]) -> Any:
    return rng.choices([o for o, _ in options], weights=[w for _, w in options])[0]


def _daytime(rng: random.Random, ts: float) -> float:
    """Moves a timestamp into waking hours (08-23 Italian time, roughly UTC+1)."""
    hour = (ts % DAY) / HOUR
    if 7 <= hour < 22:
        return ts
    return ts - (ts % DAY) + (7 + rng.random() * 15) * HOUR + (DAY if hour >= 22 else 0)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


__all__ = ["DemoSpec", "DemoStory", "generate", "stories"]
