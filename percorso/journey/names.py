"""Events as people say them: "Placed an order" for ``Order Completed``, "Ha visto un prodotto"
for ``Product Viewed``.

A journey may name its own events (``events:`` in its YAML, by event name or by the map's
action label such as ``page: Home``); otherwise the common events of the Segment specification
(e-commerce, e-mail, mobile) and of percorso's own surveys are named here in English and Italian,
recognised in any case style (``order_completed``, ``order-completed``, ``Order Completed``).
An event neither names stays as it was sent.
"""

from __future__ import annotations

import re

from percorso.journey.definition import Journey, display

#: Common events, named in English and Italian (the Segment spec's and percorso's own).
DEFAULTS: dict[str, tuple[str, str]] = {
    "Products Searched": ("Searched the catalogue", "Ha cercato nel catalogo"),
    "Product List Viewed": ("Browsed a category", "Ha sfogliato una categoria"),
    "Product List Filtered": ("Filtered a list of products", "Ha filtrato un elenco di prodotti"),
    "Product Clicked": ("Clicked a product", "Ha cliccato un prodotto"),
    "Product Viewed": ("Viewed a product", "Ha visto un prodotto"),
    "Product Added": ("Added to the cart", "Ha aggiunto al carrello"),
    "Product Removed": ("Removed from the cart", "Ha tolto dal carrello"),
    "Product Added to Wishlist": ("Saved to the wishlist", "Ha salvato nei preferiti"),
    "Product Reviewed": ("Reviewed a product", "Ha recensito un prodotto"),
    "Product Shared": ("Shared a product", "Ha condiviso un prodotto"),
    "Cart Viewed": ("Viewed the cart", "Ha visto il carrello"),
    "Checkout Started": ("Started the checkout", "Ha iniziato il checkout"),
    "Checkout Step Viewed": ("Viewed a checkout step", "Ha visto un passo del checkout"),
    "Checkout Step Completed": ("Completed a checkout step", "Ha completato un passo del checkout"),
    "Payment Info Entered": ("Entered the payment details", "Ha inserito i dati di pagamento"),
    "Payment Failed": ("Had a payment fail", "Ha avuto un pagamento fallito"),
    "Coupon Entered": ("Entered a coupon", "Ha inserito un coupon"),
    "Coupon Applied": ("Used a coupon", "Ha usato un coupon"),
    "Coupon Denied": ("Had a coupon refused", "Ha avuto un coupon rifiutato"),
    "Order Completed": ("Placed an order", "Ha fatto un ordine"),
    "Order Updated": ("Changed an order", "Ha modificato un ordine"),
    "Order Refunded": ("Got a refund", "Ha ricevuto un rimborso"),
    "Order Cancelled": ("Cancelled an order", "Ha annullato un ordine"),
    "Signed Up": ("Signed up", "Si è registrato"),
    "Signed In": ("Signed in", "Ha fatto l'accesso"),
    "Signed Out": ("Signed out", "È uscito"),
    "Registration Started": ("Started to sign up", "Ha iniziato la registrazione"),
    "Registration Submitted": ("Sent the sign-up form", "Ha inviato la registrazione"),
    "Registration Confirmed": ("Confirmed the sign-up", "Ha confermato la registrazione"),
    "Newsletter Subscribed": ("Subscribed to the newsletter", "Si è iscritto alla newsletter"),
    "Email Delivered": ("Was sent an e-mail", "Ha ricevuto un'e-mail"),
    "Email Opened": ("Opened an e-mail", "Ha aperto un'e-mail"),
    "Email Link Clicked": ("Clicked a link in an e-mail", "Ha cliccato un link in un'e-mail"),
    "Email Bounced": ("Had an e-mail bounce", "Ha avuto un'e-mail respinta"),
    "Email Marked as Spam": ("Marked an e-mail as spam", "Ha segnato un'e-mail come spam"),
    "Unsubscribed": ("Unsubscribed", "Si è disiscritto"),
    "Application Installed": ("Installed the app", "Ha installato l'app"),
    "Application Opened": ("Opened the app", "Ha aperto l'app"),
    "Application Updated": ("Updated the app", "Ha aggiornato l'app"),
    "Application Uninstalled": ("Uninstalled the app", "Ha disinstallato l'app"),
    "Push Notification Tapped": ("Tapped a notification", "Ha toccato una notifica"),
    "Survey Shown": ("Was shown a survey", "Ha visto un sondaggio"),
    "Survey Answered": ("Answered a survey", "Ha risposto a un sondaggio"),
    "Survey Responded": ("Answered a survey", "Ha risposto a un sondaggio"),
    "Survey Commented": ("Commented in a survey", "Ha commentato in un sondaggio"),
    "Survey Dismissed": ("Dismissed a survey", "Ha chiuso un sondaggio"),
    "Ticket Opened": ("Opened a support ticket", "Ha aperto un ticket di assistenza"),
    "Ticket Resolved": ("Had a support ticket solved", "Ha avuto un ticket risolto"),
    "Call Completed": ("Called customer service", "Ha chiamato il servizio clienti"),
    "Store Visited": ("Visited a store", "Ha visitato un negozio"),
    "Message Shown": ("Was shown a message on the site", "Ha visto un messaggio sul sito"),
    "Message Clicked": ("Clicked a message on the site", "Ha cliccato un messaggio sul sito"),
}


def _folded(name: str) -> str:
    """A name in any case style, folded: ``order_completed``, ``OrderCompleted`` and
    ``Order Completed`` are one name."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name)
    return " ".join(re.split(r"[\s_\-.]+", spaced.lower())).strip()


_FOLDED = {_folded(k): v for k, v in DEFAULTS.items()}


def action_name(journey: Journey | None, action: str, lang: str = "en") -> str | None:
    """``action`` (an event name, or a map action label like ``page: Home``) as people say it in
    ``lang``: the journey's own name for it, else the common name; None when neither names it."""
    if journey is not None and journey.events:
        own = journey.events.get(action)
        if own is None:
            folded = _folded(action)
            own = next((v for k, v in journey.events.items() if _folded(k) == folded), None)
        if own is not None:
            return display(own, lang)
    common = _FOLDED.get(_folded(action))
    if common is None:
        return None
    return common[1] if lang == "it" else common[0]
