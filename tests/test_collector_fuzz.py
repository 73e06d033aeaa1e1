"""Whatever a client sends, the collector answers 2xx or a 4xx that names the problem — never 5xx."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
fields = st.sampled_from(
    [
        "type",
        "event",
        "userId",
        "anonymousId",
        "messageId",
        "timestamp",
        "sentAt",
        "name",
        "properties",
        "traits",
        "context",
        "groupId",
        "previousId",
        "integrations",
        "channel",
    ]
)
messages = st.dictionaries(fields, json_values, max_size=8) | json_values
bodies = st.one_of(
    st.builds(lambda b: json.dumps({"batch": b}), st.lists(messages, max_size=5)),
    st.builds(json.dumps, messages),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=bodies, path=st.sampled_from(["/v1/batch", "/v1/track", "/v1/identify", "/v1/page", "/v1/import"])
)
def test_no_input_makes_a_server_error(server, body, path):
    with server.client() as c:
        r = c.post(
            path, content=body.encode("utf-8", "surrogatepass"), headers={"content-type": "application/json"}
        )
    assert r.status_code < 500, (body, r.text)
    payload = r.json()
    if r.status_code >= 400:
        assert payload["success"] is False and payload["message"]
