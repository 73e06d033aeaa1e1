"""The Segment message model: parsing, validation errors, clock skew, channels (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from percorso.channels import ChannelClassifier, ChannelRulesError, load_rules, parse_rules
from percorso.events import Limits, MessageError, parse_message, repair_surrogates

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def parse(message: dict, classifier: ChannelClassifier, **kw):
    return parse_message(msgspec.json.encode(message), received_at=NOW, classifier=classifier, **kw)


def test_track_is_normalised(classifier):
    e = parse(
        {
            "type": "track",
            "event": "Order Completed",
            "userId": 42,
            "messageId": "m1",
            "timestamp": "2026-06-01T10:00:00Z",
            "properties": {"revenue": 10},
            "context": {
                "ip": "203.0.113.9",
                "locale": "it-IT",
                "library": {"name": "analytics.js"},
                "page": {"url": "https://shop.example/checkout?x=1", "referrer": "https://shop.example/cart"},
            },
        },
        classifier,
    )
    assert (e.type, e.event, e.user_id, e.message_id) == ("track", "Order Completed", "42", "m1")
    assert e.timestamp == datetime(2026, 6, 1, 10, tzinfo=UTC)
    assert e.page_path == "/checkout" and e.ip == "203.0.113.9" and e.locale == "it-IT"
    assert msgspec.json.decode(e.properties) == {"revenue": 10}
    assert e.channel == "web"  # browser library, internal referrer


def test_clock_skew_is_corrected_from_sent_at(classifier):
    # The device clock is 1 hour fast: it stamped the event at 13:00 and sent it at 13:05.
    e = parse(
        {
            "type": "track",
            "event": "X",
            "anonymousId": "a",
            "timestamp": "2026-06-01T13:00:00Z",
            "sentAt": "2026-06-01T13:05:00Z",
        },
        classifier,
    )
    assert e.timestamp == NOW - timedelta(minutes=5)
    assert e.original_timestamp == datetime(2026, 6, 1, 13, tzinfo=UTC)
    # Batch-level sentAt applies when the message has none.
    e = parse(
        {"type": "track", "event": "X", "anonymousId": "a", "timestamp": "2026-06-01T13:00:00Z"},
        classifier,
        batch_sent_at="2026-06-01T13:00:10Z",
    )
    assert e.timestamp == NOW - timedelta(seconds=10)


def test_missing_timestamp_means_received_at(classifier):
    assert parse({"type": "page", "anonymousId": "a"}, classifier).timestamp == NOW


@pytest.mark.parametrize(
    ("message", "field", "fragment"),
    [
        ({"event": "X", "anonymousId": "a"}, "type", "required"),
        ({"type": "trak", "event": "X", "anonymousId": "a"}, "type", "not one of"),
        ({"type": "track", "anonymousId": "a"}, "event", "required for a track call"),
        ({"type": "track", "event": "X"}, "anonymousId", "anonymousId or a userId is required"),
        ({"type": "track", "event": "X", "userId": 1.5}, "userId", "got 'float'"),
        ({"type": "track", "event": "X", "userId": True}, "userId", "got 'bool'"),
        ({"type": "track", "event": 7, "userId": "u"}, "event", "expected 'str"),
        ({"type": "track", "event": "X", "userId": "u", "timestamp": "yesterday"}, "timestamp", "ISO 8601"),
        (
            {"type": "track", "event": "X", "userId": "u", "timestamp": "1970-01-01T00:00:00Z"},
            "timestamp",
            "before 2000",
        ),
        (
            {"type": "track", "event": "X", "userId": "u", "timestamp": "2031-01-01T00:00:00Z"},
            "timestamp",
            "future",
        ),
        ({"type": "track", "event": "X", "userId": "u", "sentAt": "soon"}, "sentAt", "ISO 8601"),
        ({"type": "track", "event": "X", "userId": "u", "properties": [1, 2]}, "properties", "JSON object"),
        ({"type": "track", "event": "X", "userId": "u", "properties": "text"}, "properties", "JSON object"),
        ({"type": "track", "event": "X", "userId": "u", "properties": {"a": "\u0000"}}, "properties", "NUL"),
        ({"type": "track", "event": "X", "userId": "u\u0000"}, "userId", "NUL"),
        ({"type": "track", "event": "X" * 300, "userId": "u"}, "event", "limit is 255"),
        ({"type": "group", "userId": "u"}, "groupId", "required"),
        ({"type": "alias", "userId": "u"}, "previousId", "required"),
        (
            {"type": "track", "event": "X", "userId": "u", "context": {"channel": "Call Center!"}},
            "context.channel",
            "not a channel",
        ),
    ],
)
def test_bad_messages_name_the_field(classifier, message, field, fragment):
    with pytest.raises(MessageError) as info:
        parse(message, classifier)
    assert info.value.field == field
    assert fragment in info.value.reason


def test_deep_nesting_and_size_limits(classifier):
    deep: dict = {}
    node = deep
    for _ in range(30):
        node["a"] = {}
        node = node["a"]
    with pytest.raises(MessageError, match=r"nested 3[01] levels deep"):
        parse({"type": "track", "event": "X", "userId": "u", "properties": deep}, classifier)
    big = {"type": "track", "event": "X", "userId": "u", "properties": {"blob": "x" * 40_000}}
    with pytest.raises(MessageError, match=r"the limit is 32,768") as info:
        parse(big, classifier)
    assert info.value.field == "message"
    assert parse(big, classifier, limits=Limits(max_message_bytes=100_000)).event == "X"


def test_lone_surrogate_is_replaced_and_pairs_pass(classifier):
    raw = b'{"type":"track","event":"X","userId":"u","properties":{"a":"\\ud800 \\\\ud800"}}'
    e = parse_message(raw, received_at=NOW, classifier=classifier)
    assert msgspec.json.decode(e.properties) == {"a": "\ufffd \\ud800"}
    assert e.warnings and e.warnings[0][1].startswith("a lone UTF-16 surrogate")
    pair = b'{"type":"track","event":"X","userId":"u","properties":{"a":"\\ud83d\\ude00"}}'
    e = parse_message(pair, received_at=NOW, classifier=classifier)
    assert msgspec.json.decode(e.properties) == {"a": "\U0001f600"} and not e.warnings


@pytest.mark.parametrize(
    ("data", "repaired"),
    [
        (b'"\\ud83d"', b'"\\ufffd"'),
        (b'"\\ude00x"', b'"\\ufffdx"'),
        (b'"\\ud83d\\ude00"', None),
        (b'"\\ude00\\ud83d"', b'"\\ufffd\\ufffd"'),
        (b'"\\\\ud83d"', None),
        (b'"\\u00e8"', None),
        (b'"plain"', None),
    ],
)
def test_repair_surrogates(data, repaired):
    assert repair_surrogates(data) == repaired


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"timestamp": "0001-01-01T00:00:00+05:00"}, "timestamp"),
        ({"originalTimestamp": "9999-12-31T23:59:59-05:00"}, "originalTimestamp"),
        ({"timestamp": "2026-06-01T10:00:00Z", "sentAt": "0001-01-01T00:00:00+05:00"}, "sentAt"),
        ({"timestamp": "0002-01-01T00:00:00Z", "sentAt": "9999-01-01T00:00:00Z"}, "sentAt"),
    ],
)
def test_timestamps_off_the_calendar_name_the_field(classifier, message, field):
    with pytest.raises(MessageError) as info:
        parse({"type": "track", "event": "X", "userId": "u", **message}, classifier)
    assert info.value.field == field


def test_a_message_nested_past_the_decoder_is_a_message_error(classifier):
    deep = b'{"a":' * 5000 + b"1" + b"}" * 5000
    raw = b'{"type":"track","event":"X","userId":"u","properties":' + deep + b"}"
    with pytest.raises(MessageError, match="nested too deeply"):
        parse_message(raw, received_at=NOW, classifier=classifier, limits=Limits(max_message_bytes=10**6))


def test_identify_traits_from_context_and_page_category(classifier):
    context_only = {
        "type": "identify",
        "userId": "u",
        "context": {"traits": {"plan": "a", "email": "A@x.it"}},
    }
    e = parse(context_only, classifier)
    assert e.trait_values == {"plan": "a", "email": "A@x.it"} and e.email == "a@x.it"
    both = {**context_only, "traits": {"plan": "b"}}
    assert parse(both, classifier).trait_values == {"plan": "b"}
    page = parse({"type": "page", "anonymousId": "a", "name": "Shoes", "category": "Shop"}, classifier)
    assert (page.name, msgspec.json.decode(page.properties)) == ("Shoes", {"category": "Shop"})
    kept = parse(
        {"type": "page", "anonymousId": "a", "category": "Shop", "properties": {"category": "Own"}},
        classifier,
    )
    assert msgspec.json.decode(kept.properties) == {"category": "Own"}
    # Only page and screen calls read a category; elsewhere any value passes untouched.
    assert (
        parse({"type": "track", "event": "X", "userId": "u", "category": {"a": 1}}, classifier).event == "X"
    )


@pytest.mark.parametrize("junk", ["", "  ", "null", "undefined", "anonymous", "0", "None", "[object Object]"])
def test_junk_identifiers_are_dropped_with_a_warning(classifier, junk):
    e = parse({"type": "track", "event": "X", "userId": junk, "anonymousId": "real-anon"}, classifier)
    assert e.user_id is None and e.anonymous_id == "real-anon"
    assert e.warnings and e.warnings[0][0] == "userId"
    with pytest.raises(MessageError, match="anonymousId or a userId"):
        parse({"type": "track", "event": "X", "userId": junk}, classifier)


def test_email_from_identify_traits_and_context(classifier):
    e = parse(
        {"type": "identify", "userId": "u", "traits": {"email": "  Giulia@Example.IT ", "consent": True}},
        classifier,
    )
    assert e.email == "giulia@example.it" and e.consent == "granted"
    e = parse(
        {"type": "track", "event": "X", "anonymousId": "a", "context": {"traits": {"email": "a@b.it"}}},
        classifier,
    )
    assert e.email == "a@b.it"
    e = parse({"type": "identify", "userId": "u", "traits": {"email": "not-an-email"}}, classifier)
    assert e.email is None and e.warnings and e.warnings[0][0] == "traits.email"


@pytest.mark.parametrize(
    ("context", "extra", "channel"),
    [
        ({"campaign": {"medium": "email", "source": "newsletter"}}, {}, "email"),
        ({"campaign": {"medium": "cpc", "source": "google"}}, {}, "ads"),
        ({"page": {"url": "https://s.it/?utm_source=facebook&utm_medium=social"}}, {}, "social"),
        (
            {
                "library": {"name": "analytics.js"},
                "page": {"url": "https://s.it/", "referrer": "https://www.google.com/"},
            },
            {},
            "search",
        ),
        (
            {
                "library": {"name": "analytics.js"},
                "page": {"url": "https://s.it/", "referrer": "https://blog.partner.it/x"},
            },
            {},
            "referral",
        ),
        (
            {"library": {"name": "analytics.js"}, "page": {"url": "https://s.it/", "referrer": ""}},
            {},
            "direct",
        ),
        (
            {
                "library": {"name": "analytics.js"},
                "page": {"url": "https://s.it/b", "referrer": "https://s.it/a"},
            },
            {},
            "web",
        ),
        ({"library": {"name": "analytics-ios"}}, {}, "app"),
        ({}, {"type": "screen", "name": "Home"}, "app"),
        ({"channel": "store"}, {}, "store"),
        ({"channel": "Call Center"}, {}, "call-center"),
        ({"library": {"name": "analytics-python"}}, {}, "server"),
        ({}, {"channel": "server"}, "server"),  # Segment's transport value is not an explicit channel
    ],
)
def test_channel_is_derived_from_context(classifier, context, extra, channel):
    message = {"type": "page", "anonymousId": "a", "context": context, **extra}
    assert parse(message, classifier).channel == channel


def test_channel_rules_are_configurable(tmp_path):
    path = tmp_path / "channels.yaml"
    path.write_text("rules:\n  - channel: kiosk\n    library: ['kiosk-*']\n  - channel: web\n")
    custom = ChannelClassifier(load_rules(path))
    e = parse(
        {"type": "track", "event": "X", "anonymousId": "a", "context": {"library": {"name": "kiosk-2"}}},
        custom,
    )
    assert e.channel == "kiosk"
    with pytest.raises(ChannelRulesError, match="unknown field 'medium'"):
        parse_rules({"rules": [{"channel": "x", "medium": ["a"]}]})
