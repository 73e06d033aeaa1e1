"""A shop with frictions planted on purpose, and the truth to score pain-point findings against.

Independent of the demo's generator. Visitors of a shop come back over four months (a first
visit on any day, later visits days apart); each visit browses products and may go on to the
cart, the checkout, the payment and the order. Every event carries the visitor's ``device``,
``country`` and ``source`` as properties (as an export from another tool would: percorso's
tracker fields are absent, so the ``platform`` dimension is of no help here).

Planted frictions (:func:`truth`):

1. **payment incident** - for three weeks, payment -> order converts half as often, for everyone,
   in every visit (also the later visits of people who came before it);
2. **mobile checkout bug** - for four weeks, checkout -> payment halves on ``device=mobile`` only;
3. **lasting country gap** - ``country=DE`` goes from cart to checkout far less often, all period;
4. **early drop of a source** - ``source=social`` adds to cart half as often, all period.

Traps that are not frictions: people go back from the cart to browsing (a third of them, in
every segment and every week); the order is often stamped in the same second as the payment, and
sometimes a second before it (out of order); noise events (searches, newsletter views,
wishlists); a share of the people who stop at the checkout finish in a later visit; failed
payments are followed by an error event, named in the variant's style.

Variants change the event names' style (``title``: "Product Viewed", ``snake``:
``product_viewed``, ``kebab``: ``product-viewed``); seeds change everything else.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

START = datetime(2026, 1, 5, tzinfo=UTC)
DAYS = 119  # to 4 May 2026
STEPS = ["Product Viewed", "Product Added", "Checkout Started", "Payment Submitted", "Order Completed"]
NOISE = ["Search Performed", "Newsletter Viewed", "Wishlist Added"]
ERROR = "Payment Failed"

# Base conversion of each step to the next within a visit.
BASE = [0.30, 0.55, 0.70, 0.85]

INCIDENT = (40, 61)  # day offsets: 14 February - 6 March
MOBILE_BUG = (70, 98)  # 16 March - 12 April


def name(event: str, style: str) -> str:
    words = event.split()
    if style == "snake":
        return "_".join(w.lower() for w in words)
    if style == "kebab":
        return "-".join(w.lower() for w in words)
    return event


def truth() -> list[dict[str, Any]]:
    """The planted frictions: the transition (1-based: step k to k+1 of :data:`STEPS`), the
    segment, and the days (``None``: the whole period)."""
    return [
        {
            "name": "payment incident",
            "step_index": 4,
            "segment": None,
            "start": (START + timedelta(days=INCIDENT[0])).date(),
            "end": (START + timedelta(days=INCIDENT[1] - 1)).date(),
        },
        {
            "name": "mobile checkout bug",
            "step_index": 3,
            "segment": {"property:device": "mobile"},
            "start": (START + timedelta(days=MOBILE_BUG[0])).date(),
            "end": (START + timedelta(days=MOBILE_BUG[1] - 1)).date(),
        },
        {
            "name": "lasting country gap",
            "step_index": 2,
            "segment": {"property:country": "DE"},
            "start": None,
            "end": None,
        },
        {
            "name": "early drop of a source",
            "step_index": 1,
            "segment": {"property:source": "social"},
            "start": None,
            "end": None,
        },
    ]


def _pick(rng: random.Random, weights: dict[str, float]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def _rate(k: int, day: int, who: dict[str, str]) -> float:
    """Conversion of step k+1 -> k+2 (0-based k) in a visit on ``day``."""
    p = BASE[k]
    if k == 0 and who["source"] == "social":
        p *= 0.5
    if k == 1 and who["country"] == "DE":
        p *= 0.6
    if k == 2 and who["device"] == "mobile" and MOBILE_BUG[0] <= day < MOBILE_BUG[1]:
        p *= 0.5
    if k == 3 and INCIDENT[0] <= day < INCIDENT[1]:
        p *= 0.5
    return p


def events(visitors: int, seed: int = 1, style: str = "title") -> Iterator[dict[str, Any]]:
    """Segment-style track calls, visitor by visitor (each visitor's in time order)."""
    rng = random.Random(seed)
    steps = [name(s, style) for s in STEPS]
    noise = [name(s, style) for s in NOISE]
    error = name(ERROR, style)
    n = 0
    for v in range(visitors):
        who = {
            "device": _pick(rng, {"desktop": 0.55, "mobile": 0.38, "tablet": 0.07}),
            "country": _pick(rng, {"IT": 0.5, "DE": 0.2, "FR": 0.15, "ES": 0.15}),
            "source": _pick(rng, {"search": 0.4, "social": 0.25, "email": 0.15, "direct": 0.2}),
        }
        user = f"v{seed}-{v}"
        day = rng.uniform(0, DAYS)
        resume = 0  # a visit that stopped at the checkout may finish in the next one
        for _visit in range(1 + min(int(rng.expovariate(0.7)), 6)):
            if day >= DAYS:
                break
            t = START + timedelta(days=day)
            d = int(day)
            out: list[tuple[datetime, str, dict[str, Any]]] = []

            def emit(
                event: str,
                extra: dict[str, Any] | None = None,
                out: list[tuple[datetime, str, dict[str, Any]]] = out,
                who: dict[str, str] = who,
            ) -> None:
                nonlocal t
                out.append((t, event, {**who, **(extra or {})}))
                t += timedelta(seconds=rng.randint(5, 90))

            for _ in range(rng.randint(1, 4)):
                emit(steps[0], {"product": f"p{rng.randint(1, 300)}"})
                if rng.random() < 0.15:
                    emit(rng.choice(noise))
            # Steps reached in this visit (1: only browsing); a resumed visit starts at the checkout.
            reached = resume or 1
            for k in range(reached - 1, 4):
                if rng.random() >= _rate(k, d, who):
                    break
                reached = k + 2
            resume = 0
            for i in range(1, reached):
                if i == 1 and rng.random() < 0.35:  # back to browsing from the cart: harmless
                    emit(steps[1])
                    emit(steps[0], {"product": f"p{rng.randint(1, 300)}"})
                    continue
                if i == 4 and rng.random() < 0.25:  # the order in the payment's second, or before it
                    stamp = out[-1][0] - timedelta(seconds=rng.choice([0, 0, 0, 1]))
                    out.append((stamp, steps[i], {**who, "revenue": round(rng.uniform(20, 240), 2)}))
                    continue
                emit(steps[i], {"revenue": round(rng.uniform(20, 240), 2)} if i == 4 else None)
            if reached == 4:  # a payment that did not become an order failed
                emit(error)
            if reached == 3 and rng.random() < 0.15:
                resume = 3  # comes back later and goes on from the checkout
            for stamp, event, props in out:
                n += 1
                yield {
                    "type": "track",
                    "userId": user,
                    "event": event,
                    "properties": props,
                    "timestamp": stamp.isoformat(),
                    "messageId": f"{user}-{n}",
                }
            day += 1 + rng.expovariate(1 / 7)


def days_apart(a: date | None, b: date | None) -> float:
    if a is None or b is None:
        return math.inf
    return abs((a - b).days)
