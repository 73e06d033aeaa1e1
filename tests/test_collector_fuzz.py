"""Whatever a client sends, the collector answers 2xx or a 4xx that names the problem — never 5xx.

Property-based (hypothesis, derandomised so every CI run sends the same cases): arbitrary JSON
values and bytes, several text encodings and gzip, nesting from flat to past the decoder's
depth, timestamps from year 1 to 9999 with every offset, and lone or paired UTF-16 surrogates.
The parser alone takes the most cases; the live server on both stores takes the rest, and
what it acknowledges must be in the store. The suite's summary prints how many cases ran.
"""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from percorso.channels import ChannelClassifier, load_rules
from percorso.events import Event, MessageError, parse_message
from tests import fuzz_tally

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)

offsets = st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
# Instants anywhere on the calendar, and often right at its ends, where an offset crosses it.
instants = st.one_of(
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)),
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(1, 1, 2)),
    st.datetimes(min_value=datetime(9999, 12, 30), max_value=datetime(9999, 12, 31, 23, 59, 59)),
    st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2026, 7, 1)),
)
timestamps = st.one_of(
    st.builds(lambda d, tz: d.replace(tzinfo=tz).isoformat(), instants, offsets),
    st.builds(lambda d: d.isoformat(), instants),
    st.builds(lambda d: d.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z"), instants),
    st.sampled_from(
        [
            "0001-01-01T00:00:00+05:00",
            "9999-12-31T23:59:59-05:00",
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999Z",
            "2026-02-30T00:00:00Z",
            "2026-01-01T00:00:00+24:00",
            "20260101T000000Z",
            "",
        ]
    ),
    st.text(max_size=30),
    json_values,
)
# JSON escapes as JavaScript writes them: halves of an emoji, a whole one, an escaped backslash.
surrogates = st.sampled_from(["\\ud83d", "\\ude00", "\\ud83d\\ude00", "\\udbff", "\\\\ud83d", "\\u0000"])

FIELDS = [
    "type",
    "event",
    "userId",
    "anonymousId",
    "messageId",
    "name",
    "category",
    "properties",
    "traits",
    "context",
    "groupId",
    "previousId",
    "integrations",
    "channel",
    "receivedAt",
]
TIME_FIELDS = ["timestamp", "originalTimestamp", "sentAt", "receivedAt"]
CALLS = ["track", "identify", "page", "screen", "group", "alias"]
#: What is done to an otherwise valid message; each request gets at least one.
MUTATIONS = ["field", "times", "context traits", "nest", "surrogate", "truncate", "none"]


def valid_message(call: str, user: str) -> dict[str, object]:
    """The smallest message of each call type that percorso stores."""
    message: dict[str, object] = {"type": call, "userId": user}
    extra: dict[str, dict[str, object]] = {
        "track": {"event": "Fuzzed"},
        "identify": {"traits": {"email": "fuzz@example.it"}},
        "page": {"name": "Home", "category": "Shop", "properties": {"url": "https://shop.example/"}},
        "screen": {"name": "Home"},
        "group": {"groupId": "acme"},
        "alias": {"previousId": "anon-1"},
    }
    message.update(extra[call])
    return message


@st.composite
def messages(draw: st.DrawFn, call: str | None = None) -> str:
    """One message as JSON text: a valid call with one or two things made wrong or odd."""
    kind = call or draw(st.sampled_from(CALLS))
    message = valid_message(kind, draw(st.text(min_size=1, max_size=12)))
    mutations = draw(st.lists(st.sampled_from(MUTATIONS), min_size=1, max_size=2))
    if "field" in mutations:
        message[draw(st.sampled_from(FIELDS))] = draw(json_values)
    if "times" in mutations:
        for field in draw(st.lists(st.sampled_from(TIME_FIELDS), min_size=1, max_size=3, unique=True)):
            message[field] = draw(timestamps)
    if "context traits" in mutations:
        message.pop("traits", None)
        message["context"] = {"traits": draw(st.dictionaries(st.text(max_size=8), json_values, max_size=4))}
    text = json.dumps(message, ensure_ascii=draw(st.booleans()))
    if "nest" in mutations:
        levels = draw(st.sampled_from([15, 16, 17, 60, 900, 1100, 5000]))
        nested = '{"a":' * levels + "1" + "}" * levels
        text = text[:-1] + f', "properties": {nested}}}'
    if "surrogate" in mutations:
        where = draw(st.sampled_from(["event", "name", "userId", "properties", "context"]))
        value = f'"cut {draw(surrogates)} here"'
        text = text[:-1] + (
            f', "{where}": {{"k": {value}}}}}'
            if where in ("properties", "context")
            else f', "{where}": {value}}}'
        )
    if "truncate" in mutations:
        text = text[: draw(st.integers(min_value=0, max_value=len(text)))]
    return text


SHAPES = ["single", "batch", "import", "ndjson", "bytes", "any json"]
PATHS = {call: f"/v1/{call}" for call in CALLS}


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, bytes, dict[str, str]]:
    """A request: path, body bytes (some encoding, maybe gzip) and headers."""
    shape = draw(st.sampled_from(SHAPES))
    headers = {"content-type": "application/json"}
    if shape == "single":
        call = draw(st.sampled_from(CALLS))
        path, text = PATHS[call], draw(messages(call))
    elif shape in ("batch", "import"):
        path = f"/v1/{shape}"
        envelope = ",".join(draw(st.lists(messages(), min_size=1, max_size=4)))
        sent_at = draw(st.one_of(st.none(), timestamps))
        text = (
            f'{{"batch": [{envelope}]'
            + ("" if sent_at is None else f', "sentAt": {json.dumps(sent_at)}')
            + "}"
        )
    elif shape == "ndjson":
        path, headers = "/v1/import", {"content-type": "application/x-ndjson"}
        text = "\n".join(draw(st.lists(messages(), min_size=1, max_size=4)))
    elif shape == "bytes":
        path = draw(st.sampled_from(["/v1/track", "/v1/batch", "/v1/import"]))
        return path, draw(st.binary(max_size=300)), headers
    else:
        path = draw(st.sampled_from(["/v1/track", "/v1/batch"]))
        text = json.dumps(draw(json_values))
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8", "utf-16", "latin-1"]))
    body = text.encode(encoding, "replace")
    if draw(st.integers(min_value=0, max_value=5)) == 0:
        body, headers = gzip.compress(body), {**headers, "content-encoding": "gzip"}
    return path, body, headers


CLASSIFIER = ChannelClassifier(load_rules())
RECEIVED = datetime(2026, 6, 1, tzinfo=UTC)


@settings(max_examples=1500, deadline=None, derandomize=True)
@given(
    text=messages(),
    call=st.sampled_from([None, *CALLS]),
    historical=st.booleans(),
    stray=st.one_of(st.none(), st.tuples(st.floats(0, 1), st.binary(min_size=1, max_size=3))),
)
def test_the_parser_returns_an_event_or_names_the_problem(
    text: str, call: str | None, historical: bool, stray: tuple[float, bytes] | None
) -> None:
    fuzz_tally.case("collector parser (hypothesis)")
    data = text.encode("utf-8")
    if stray is not None:  # bytes that may not be UTF-8, as one NDJSON line of an import can hold
        at = int(stray[0] * len(data))
        data = data[:at] + stray[1] + data[at:]
    try:
        event = parse_message(
            data,
            received_at=RECEIVED,
            classifier=CLASSIFIER,
            call_type=call,
            historical=historical,
        )
    except MessageError as exc:
        assert exc.field and exc.reason
        return
    except Exception:
        fuzz_tally.server_error("collector parser (hypothesis)")
        raise
    assert isinstance(event, Event)
    assert datetime(2000, 1, 1, tzinfo=UTC) <= event.timestamp <= RECEIVED + timedelta(days=1)
    json.loads(event.properties), json.loads(event.traits), json.loads(event.context)


@settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=requests())
def test_the_live_collector_answers_4xx_or_stores(server, request: tuple[str, bytes, dict[str, str]]) -> None:
    path, body, headers = request
    fuzz_tally.case("collector over HTTP (hypothesis)")
    before = server.store.counts()["events"]
    with server.client(server.write_key) as c:
        r = c.post(path, content=body, headers=headers)
    if r.status_code >= 500:
        fuzz_tally.server_error("collector over HTTP (hypothesis)")
    assert r.status_code < 500, (path, body[:300], r.text)
    payload = r.json()
    added = server.store.counts()["events"] - before
    if r.status_code >= 400:
        assert payload["success"] is False and payload["message"], payload
        assert added == 0
        return
    if "received" in payload:  # a batch or an import: every message accounted for, once
        assert (
            payload["stored"]
            + payload["duplicates"]
            + len(payload["rejected"])
            + payload.get("rejected_more", 0)
            == payload["received"]
        )
        assert added == payload["stored"]
    else:
        assert added == int(payload["stored"])
