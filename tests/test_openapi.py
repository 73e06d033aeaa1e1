"""The OpenAPI document is true: schemathesis sends what the document allows (and what it
forbids) to the running server over real HTTP, on both stores, and checks every answer
against the document: no server error, only documented statuses, content types, headers and
bodies, invalid data refused, valid data accepted, authentication enforced.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings
from schemathesis import Case, CheckContext, Response
from schemathesis.core.failures import AcceptedNegativeData
from schemathesis.specs.openapi.checks import negative_data_rejection

from percorso.config import Settings
from percorso.store import open_store
from percorso.web.app import create_app
from tests import fuzz_tally
from tests.conftest import ENGINES, LiveServer, create_pg_database, drop_pg_database, free_port

#: Examples per operation and generation phase; the whole file runs in about 50 s per engine.
MAX_EXAMPLES = 6

#: Statuses a request the document calls valid may still get, besides 2xx/404/409: the rules
#: JSON Schema cannot state. Every other check still runs on these operations.
SEMANTIC_400: dict[str, str] = {
    # Placeholder ids ("0", "test") are ignored, timestamps must fall in [first year, now + 24 h],
    # objects nest at most 16 levels, a channel must be a slug: described, not expressible.
    "/v1/track": "identifier, clock and nesting rules",
    "/v1/identify": "identifier, clock and nesting rules",
    "/v1/page": "identifier, clock and nesting rules",
    "/v1/screen": "identifier, clock and nesting rules",
    "/v1/group": "identifier, clock and nesting rules",
    "/v1/alias": "identifier, clock and nesting rules",
    "/v1/batch": "a batch whose every member breaks one of those rules",
    "/v1/import": "a batch whose every member breaks one of those rules",
    # A cursor is valid only if this server issued it.
    "/v1/contacts": "cursor",
    "/v1/contacts/{contact_id}/timeline": "cursor",
    # Exactly one of email, userId and anonymousId.
    "/v1/contacts/lookup": "exactly one identifier",
    # `from` must come before `to`; step patterns and url rules have a grammar of their own.
    "/v1/journeys/{key}/stages": "from before to",
    "/v1/journeys/{key}/map": "from before to; persona must exist",
    "/v1/journeys/{key}/painpoints": "from before to; dimension names",
    "/v1/funnels": "from before to; step pattern grammar; journey must exist",
    "/v1/paths": "from before to; step pattern grammar; REGEX=>REPLACEMENT",
    "/v1/heatmaps": "from before to",
    "/v1/transitions": "from before to",
    "/v1/attribution": "from before to; step pattern grammar",
    # An automation measured as an A/B test needs a goal and a split step.
    "/v1/automations/{key}/experiment": "a goal and a split step",
    "/v1/retention": "from before to; step pattern grammar",
    # A document's key must be the URL's; a schema-valid document can still name unknown stages.
    "/v1/journeys/{key}": "the document's key must be the URL's",
    "/v1/automations/{key}": "the document's key must be the URL's",
    "/v1/surveys/{key}": "the document's key must be the URL's; questions unique, one scored",
    # Answers are checked against the survey's own questions; results need from before to.
    "/v1/surveys/{key}/answers": "answers per question of the survey",
    "/v1/surveys/{key}/results": "from before to",
}


SLOW_DOCUMENTS = ("/v1/journeys/{key}", "/v1/automations/{key}", "/v1/surveys/{key}")


@schemathesis.serializer("application/x-ndjson")
def _ndjson(_: Any, value: Any) -> dict[str, Any]:
    lines = value if isinstance(value, list) else [value]
    return {"data": b"\n".join(json.dumps(line).encode() for line in lines)}


def _config() -> schemathesis.Config:
    operations: list[dict[str, Any]] = [
        {
            "include-path": path,
            "checks": {
                "positive_data_acceptance": {
                    "expected-statuses": [
                        "2xx",
                        "3xx",
                        "400",
                        "401",
                        "403",
                        "404",
                        "409",
                        "422",
                        "429",
                        "5xx",
                    ]
                }
            },
        }
        for path in SEMANTIC_400
    ]
    # The coverage phase sends the two document endpoints some 2,000 boundary documents each
    # (a third of the run); they keep the examples and fuzzing phases, and their validation has
    # its own tests (test_journey_definition.py, test_automation.py, test_security_ssti.py).
    for operation in operations:
        if operation["include-path"] in SLOW_DOCUMENTS:
            operation["phases"] = {"coverage": {"enabled": False}}
    return schemathesis.Config.from_dict(
        {
            "seed": 20260101,
            "generation": {"max-examples": MAX_EXAMPLES},
            "phases": {"stateful": {"enabled": False}},
            "checks": {"enabled": True},
            "operations": operations,
        }
    )


# The document under test is the application's own (the test below checks the server serves it).
DOCUMENT = create_app(Settings(automation_worker=False)).openapi()
schema = schemathesis.openapi.from_dict(DOCUMENT, config=_config())


@pytest.fixture(scope="module", params=ENGINES)
def live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One server per engine for the whole file (one per operation would cost more than the run)."""
    from percorso.web.app import create_app

    if request.param == "postgres":
        url = create_pg_database()
        settings_ = Settings(
            data_dir=tmp_path_factory.mktemp("pg"), database_url=url, automation_worker=False
        )
    else:
        settings_ = Settings(data_dir=tmp_path_factory.mktemp("duckdb"), automation_worker=False)
    store = open_store(settings_)
    port = free_port()
    instance = uvicorn.Server(
        uvicorn.Config(create_app(settings_, store), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not instance.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.02)
    _, write_key = store.create_api_key("write", "openapi")
    _, secret_key = store.create_api_key("secret", "openapi")
    yield LiveServer(f"http://127.0.0.1:{port}", store, write_key, secret_key)
    instance.should_exit = True
    thread.join(timeout=10)
    store.close()
    if request.param == "postgres":
        drop_pg_database(url)


#: Where a batch member is invalid the batch still stores the others and lists the member in
#: `rejected`: that is how these operations refuse invalid data.
PER_MEMBER_REJECTION = ("/v1/batch", "/v1/import")


def negative_data_rejected_per_member(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """schemathesis' negative_data_rejection, where a batch's `rejected` list also counts, judged
    on the key as sent: a case that drops Authorization and also turns a query string into a
    one-item array (``?start_event=false`` either way) sends a valid request, since the test always
    sends the key."""
    original = case.headers
    sent = response.request.headers.get("Authorization")
    if sent is not None:
        case.headers = {**(original or {}), "Authorization": sent}
    try:
        return negative_data_rejection(ctx, response, case)
    except AcceptedNegativeData:
        if case.path in PER_MEMBER_REJECTION and response.status_code == 200 and response.json()["rejected"]:
            return None
        raise
    finally:
        case.headers = original


def _key_for(case: Case, live: LiveServer) -> str:
    security = case.operation.definition.raw.get("security") or [{}]
    return live.write_key if "writeKey" in security[0] else live.secret_key


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_server_does_what_its_openapi_document_says(case: Case, live: LiveServer) -> None:
    credentials = base64.b64encode(f"{_key_for(case, live)}:".encode()).decode()
    headers = {"Authorization": f"Basic {credentials}"}
    response = case.call(base_url=live.url, headers=headers, timeout=30)
    fuzz_tally.case("schemathesis (OpenAPI)")
    if response.status_code >= 500:
        fuzz_tally.server_error("schemathesis (OpenAPI)")
    case.validate_response(
        response,
        headers=headers,
        excluded_checks=[negative_data_rejection],
        additional_checks=[negative_data_rejected_per_member],
    )


def test_the_server_serves_the_document_under_test(live: LiveServer) -> None:
    served = httpx.get(f"{live.url}/openapi.json", timeout=10)
    assert served.status_code == 200
    assert served.json() == json.loads(json.dumps(DOCUMENT))


def _operations() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in DOCUMENT["paths"].items():
        for method, operation in item.items():
            yield method.upper(), path, operation


def test_validation_errors_are_documented_as_the_400_the_server_sends() -> None:
    assert "HTTPValidationError" not in DOCUMENT["components"]["schemas"]
    for method, path, operation in _operations():
        answers = operation["responses"]
        if "422" in answers:  # only the document endpoints: a document that does not load
            assert method == "PUT" and "requestBody" in operation, (method, path)
        for status, answer in answers.items():
            if status[0] in "45":
                assert set(answer["content"]) == {"application/json"}, (method, path, status)


def test_collect_endpoints_declare_their_body_and_keys() -> None:
    collect = [
        (m, p, op) for m, p, op in _operations() if op.get("tags") == ["collect"] and "settings" not in p
    ]
    assert len(collect) == 8
    for _method, path, operation in collect:
        body = operation["requestBody"]["content"]
        assert "application/json" in body, path
        assert operation["security"] == [{"writeKey": []}, {"secretKey": []}], path
        assert {"400", "401", "413", "429"} <= set(operation["responses"]), path
    ndjson = DOCUMENT["paths"]["/v1/import"]["post"]["requestBody"]["content"]
    assert "application/x-ndjson" in ndjson


def test_every_operation_with_a_path_parameter_documents_404() -> None:
    for method, path, operation in _operations():
        # A PUT creates what it names; the pixel answers a GIF whatever the token.
        if "{" in path and method != "PUT" and path != "/t/o/{token}":
            assert "404" in operation["responses"], (method, path)


def test_query_rules_are_in_the_document() -> None:
    parameters = {p["name"]: p for p in DOCUMENT["paths"]["/v1/contacts"]["get"]["parameters"]}
    assert parameters["email"]["schema"]["format"] == "email"
    assert (
        "issued" in parameters["cursor"]["description"]
        or "next_cursor" in parameters["cursor"]["description"]
    )
