"""Whatever the door accepts, every reader can read: a property-based round trip on both stores.

Hypothesis writes whole JSON documents as text (so they can hold what Python's JSON would not
write: ``1e999``, ``1e-400``, integers of thousands of digits, ``\\u0000``, lone surrogates,
nesting past the limit) into every field of every call type, and sends each through every HTTP
entry (the call's own endpoint, ``/v1/batch`` beside a valid sibling, an NDJSON ``/v1/import``).
Then every read path runs for the contact: the API profile, timeline and export, the dashboard's
contact page and its JSON twin, a funnel broken down by one of the properties; at the end an
automation whose email lists ``events`` and ``traits`` runs over real SMTP for every contact.

The invariant: no answer is a 5xx, every message answered as stored is on the timeline and in
the export, and every contact's email arrives. The cases run are counted in the suite's
"fuzzing" summary.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from percorso.automation.actions.email import SmtpSettings
from percorso.automation.definition import load_automation
from percorso.automation.engine import Engine, EngineSettings
from percorso.automation.store import save_automation
from percorso.web.dashboard.users import add_user
from tests import fuzz_tally
from tests.conftest import LiveServer, free_port
from tests.test_automation import Inbox
from tests.test_dashboard import signed_in

FUZZER = "round trip: every entry, every read (hypothesis)"
EXAMPLES = 40

ODD_NUMBERS = [
    "1e999", "-1e999", "1e309", "1.8e308", "-1.8e308", "1e-400", "-0.0", "0e0", "1E+2",
    "18446744073709551615", "18446744073709551616", "-9223372036854775808", "-9223372036854775809",
    "9" * 30, "1" + "0" * 4400, "1.5e300", "123456789012345678.5",
]  # fmt: skip
ODD_STRINGS = ['"\\ud83d"', '"\\udc00x"', '"1e999"', '""', '"%_%"', '"\\\\"', '"a\\u0000b"']

numbers = st.one_of(
    st.sampled_from(ODD_NUMBERS),
    st.integers().map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
)
# Mostly what the door keeps, sometimes what it refuses (NUL, nesting past 16 levels).
plain_text = st.text(alphabet=st.characters(exclude_characters="\x00"), max_size=20).map(json.dumps)
strings = st.one_of(plain_text, plain_text, st.sampled_from(ODD_STRINGS))
keys = st.one_of(
    st.sampled_from(["price", "a.b", "a/b", 'q"k', ""]).map(json.dumps),
    st.text(alphabet=st.characters(exclude_characters="\x00"), max_size=6).map(json.dumps),
)
scalars = st.one_of(numbers, numbers, strings, st.sampled_from(["true", "false", "null"]))


def _object(members: list[tuple[str, str]]) -> str:
    return "{" + ",".join(f"{k}:{v}" for k, v in members) + "}"


values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda xs: "[" + ",".join(xs) + "]"),
        st.lists(st.tuples(keys, inner), max_size=3).map(_object),
    ),
    max_leaves=10,
)
members = st.lists(st.tuples(keys, values), max_size=4).map(_object)
objects = st.one_of(
    members,
    members,
    members,
    members,
    st.just("null"),
    st.integers(min_value=14, max_value=18).map(lambda n: '{"deep":' + "[" * n + "1" + "]" * n + "}"),
)
documents = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["track", "page", "screen", "identify", "group"]),
        "properties": objects,
        "traits": objects,
        "context": objects,
        "integrations": objects,
    }
)

RECAP = """
key: recap
name: {en: Recap, it: Riepilogo}
trigger: {event: Round Trip}
steps:
  - id: recap
    email:
      category: transactional
      subject: "Recap for {{ traits.email }}"
      text: "{{ traits }} {% for e in events %}{{ e.event }} {{ e.properties }}\\n{% endfor %}"
"""


def _message(doc: dict[str, str], user: str, message_id: str) -> str:
    head: dict[str, Any] = {"type": doc["type"], "userId": user, "messageId": message_id}
    if doc["type"] == "track":
        head["event"] = "Round Trip"
    if doc["type"] in ("page", "screen"):
        head["name"] = "Round Trip"
    if doc["type"] == "group":
        head["groupId"] = "acme"
    fields = ",".join(f'"{name}":{doc[name]}' for name in ("properties", "traits", "context", "integrations"))
    return json.dumps(head)[:-1] + "," + fields + "}"


def _first_key(text: str) -> str | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(value, dict):
        for key in value:
            if key and key.isalnum():
                return str(key)
    return None


@pytest.fixture
def mail() -> Iterator[tuple[Inbox, SmtpSettings]]:
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield inbox, SmtpSettings(host="127.0.0.1", port=controller.port, sender="percorso <rt@example.it>")
    controller.stop()


def test_every_accepted_message_reads_back_through_every_path(
    server: LiveServer, mail: tuple[Inbox, SmtpSettings]
) -> None:
    inbox, smtp = mail
    save_automation(server.store, load_automation(RECAP), "test")
    add_user(server.store, "rt@example.it", "a long enough secret", role="admin")
    dashboard = signed_in(server, ("rt@example.it", "a long enough secret"))
    writer = server.client(server.write_key)
    api = server.client()
    counter = itertools.count()
    users: list[str] = []

    def answer(response: httpx.Response, what: str) -> httpx.Response:
        if response.status_code >= 500:
            fuzz_tally.server_error(FUZZER)
            raise AssertionError(f"{what}: {response.status_code} {response.text[:500]}")
        return response

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(doc=documents)
    def round_trip(doc: dict[str, str]) -> None:
        fuzz_tally.case(FUZZER)
        user = f"rt{next(counter)}"
        email = f"{user}@example.it"
        assert (
            writer.post("/v1/identify", json={"userId": user, "traits": {"email": email}}).status_code == 200
        )
        users.append(user)
        stored: set[str] = {f"track-{user}"}
        # The automation's trigger: a plain track, so every contact is enrolled.
        writer.post("/v1/track", json={"userId": user, "event": "Round Trip", "messageId": f"track-{user}"})

        ids = [f"{user}-{entry}-{uuid.uuid4().hex[:6]}" for entry in ("single", "batch", "ndjson")]
        single = answer(
            writer.post(
                f"/v1/{doc['type']}",
                content=_message(doc, user, ids[0]).encode(),
                headers={"content-type": "application/json"},
            ),
            "single",
        )
        if single.status_code == 200 and single.json()["stored"]:
            stored.add(ids[0])
        sibling = json.dumps(
            {"type": "track", "event": "Sibling", "userId": user, "messageId": f"sib-{ids[1]}"}
        )
        batch = answer(
            writer.post(
                "/v1/batch",
                content=('{"batch":[' + _message(doc, user, ids[1]) + "," + sibling + "]}").encode(),
                headers={"content-type": "application/json"},
            ),
            "batch",
        )
        if batch.status_code == 200:
            stored.add(f"sib-{ids[1]}")  # the valid sibling is stored, whatever its neighbour held
            if not any(r["index"] == 0 for r in batch.json()["rejected"]):
                stored.add(ids[1])
        else:  # the whole body was refused (larger than a body may be): nothing of it is stored
            assert batch.status_code in (400, 413), batch.text
        ndjson = answer(
            writer.post(
                "/v1/import",
                content=(_message(doc, user, ids[2]) + "\n").encode(),
                headers={"content-type": "application/x-ndjson"},
            ),
            "ndjson",
        )
        if ndjson.status_code == 200 and ndjson.json()["stored"] == 1:
            stored.add(ids[2])
        # Single, batch and NDJSON judge one message alike.
        verdicts = {ids[0] in stored, ids[1] in stored, ids[2] in stored}
        assert len(verdicts) == 1, (single.text, batch.text, ndjson.text)

        contact = answer(api.get("/v1/contacts/lookup", params={"userId": user}), "lookup").json()["id"]
        answer(api.get(f"/v1/contacts/{contact}"), "profile")
        timeline = answer(api.get(f"/v1/contacts/{contact}/timeline", params={"limit": 1000}), "timeline")
        assert stored <= {e["messageId"] for e in timeline.json()["events"]}
        export = answer(api.get(f"/v1/contacts/{contact}/export"), "export")
        assert stored <= {e["messageId"] for e in export.json()["events"]}
        page = answer(dashboard.get(f"/contacts/{contact}"), "contact page")
        assert page.status_code == 200
        assert answer(dashboard.get(f"/contacts/{contact}.json"), "contact page JSON").status_code == 200
        key = _first_key(doc["properties"])
        if key is not None:
            funnel = api.post(
                "/v1/funnels", json={"steps": ["Round Trip", "Sibling"], "breakdown": f"property:{key}"}
            )
            assert answer(funnel, "breakdown").status_code == 200

    try:
        round_trip()
    finally:
        dashboard.close()
        writer.close()
        api.close()

    # Every contact's email arrives, with its events and traits, whatever they hold.
    Engine(server.store, smtp=smtp, settings=EngineSettings(base_url="http://percorso.test")).run_until_idle()
    with server.store.session() as s:
        failed = s.rows("SELECT contact_id, exit_reason FROM enrollments WHERE status = 'failed'")
    assert failed == []
    assert sorted(str(m["To"]) for m in inbox.messages) == sorted(f"{u}@example.it" for u in users)
