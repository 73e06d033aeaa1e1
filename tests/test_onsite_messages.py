"""On-site messages reach only the browser they are for, over real HTTP on both stores: a browser
gets its anonymous id and a signed token from POST /v1/visitors, sends with that id, and reads
the messages automations queued for its contact with the token, once. A guessed userId or
anonymousId, a forged or altered token, or another visitor's token reads nothing."""

from __future__ import annotations

from typing import Any

from percorso.automation import links
from percorso.automation.definition import load_automation
from percorso.automation.engine import Engine, EngineSettings
from percorso.automation.store import save_automation
from tests.conftest import LiveServer

NUDGE = """
key: terms-nudge
name: {en: Membership terms, it: Condizioni della membership}
trigger: {event: Membership Terms Read}
steps:
  - id: explain
    onsite: {title: The Club in two minutes, body: Free delivery and early sales, cta_url: /membership}
"""


def visitor(writer: Any) -> dict[str, str]:
    answer = writer.post("/v1/visitors")
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def test_a_visitor_reads_its_own_messages_once_and_nobody_else_does(server: LiveServer) -> None:
    save_automation(server.store, load_automation(NUDGE), "test")
    engine = Engine(server.store, settings=EngineSettings(base_url=server.url))
    with server.client(server.write_key) as writer:
        ada, bea = visitor(writer), visitor(writer)
        assert ada["anonymousId"] != bea["anonymousId"] and ada["anonymousId"].startswith("v-")
        # Nothing sent yet with Ada's id: no messages, and no error.
        assert writer.get("/v1/messages", params={"token": ada["token"]}).json() == {"messages": []}
        sent = writer.post(
            "/v1/track", json={"anonymousId": ada["anonymousId"], "event": "Membership Terms Read"}
        )
        assert sent.status_code == 200
        # She signs up later: the message follows her to the known contact.
        writer.post(
            "/v1/identify",
            json={"anonymousId": ada["anonymousId"], "userId": "ada", "traits": {"plan": "member"}},
        )
        engine.run_until_idle()

        # Guessing gets nothing: identifiers are not parameters any more, tokens are checked.
        for guess in ({"userId": "ada"}, {"anonymousId": ada["anonymousId"]}):
            answer = writer.get("/v1/messages", params=guess)
            assert answer.status_code == 400 and answer.json()["field"] in guess, answer.text
        encoded, _, mac = ada["token"].rpartition(".")
        forged = [
            f"{encoded}.{'0' * len(mac)}",
            links.sign("another installation's secret", links.VISITOR, ada["anonymousId"]),
            links.sign(engine.secret, links.MESSAGE, ada["anonymousId"]),  # signed, for another purpose
            f"{encoded}=.{mac}",
        ]
        for token in forged:
            answer = writer.get("/v1/messages", params={"token": token})
            assert answer.status_code == 403 and answer.json()["field"] == "token", token
        assert writer.get("/v1/messages", params={"token": bea["token"]}).json() == {"messages": []}

        [message] = writer.get("/v1/messages", params={"token": ada["token"]}).json()["messages"]
        assert message["title"] == "The Club in two minutes" and message["cta_url"] == "/membership"
        assert message["automation"] == "terms-nudge"
        # Shown once.
        assert writer.get("/v1/messages", params={"token": ada["token"]}).json() == {"messages": []}
    with server.client() as api:  # a secret key reads them as any key would: with the token
        assert api.get("/v1/messages", params={"token": bea["token"]}).status_code == 200
