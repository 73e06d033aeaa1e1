"""Email templates cannot exhaust the server or escape the sandbox.

An editor writes email templates; Jinja's sandbox keeps them from Python internals but not from
asking for unbounded work. Every bound of percorso/automation/actions/sandbox.py is driven here the
way an editor would meet it: through the real API (``PUT /v1/automations/{key}`` to a live
server), where the template is refused with an error naming the step, the part and the limit;
and for a definition stored before these bounds existed, at send time, where that one email fails
for good with the reason while every other automation still sends through a real SMTP server.
Nothing is computed at load: compiling a template that asks for 400 MB allocates next to nothing.
"""

from __future__ import annotations

import json
import time
import tracemalloc
import uuid
from datetime import UTC, datetime
from typing import Any

import jinja2.sandbox
import pytest

from percorso.automation.actions import sandbox as sandbox_module
from percorso.automation.actions.email import SmtpSettings, render_email, template_problems
from percorso.automation.actions.sandbox import (
    MAX_OUTPUT_CHARS,
    MAX_RENDER_SECONDS,
    MAX_SOURCE_CHARS,
    MAX_STEPS,
    MAX_VALUE_CHARS,
    EmailSandbox,
    RenderLimit,
    rendering,
)
from percorso.automation.definition import automation_from_data, load_automation
from percorso.automation.engine import Engine
from percorso.automation.stats import automation_stats
from percorso.automation.store import get_automation, save_automation
from percorso.events import parse_message
from percorso.store import Store
from tests.conftest import LiveServer
from tests.test_email_links import Inbox, smtp  # noqa: F401 (the fixture)

BIG = "'a' * 1000000"  # a string at the value limit, built by the template itself

#: (what an editor writes in the HTML part, what the refusal says). Each was a working attack on
#: the plain Jinja sandbox: a hang, gigabytes of memory, or a way to Python internals.
ATTACKS: list[tuple[str, str, str]] = [
    ("constant folded at load", "{{ 'a' * (4 * 10**8) }}", "str * 400,000,000 would be larger"),
    ("huge power", "{{ 10 ** (10 ** 10) }}", "10 ** 10,000,000,000 would be larger"),
    ("power of a power", "{{ 7 ** 9999999 }}", "would be larger than 1,000,000 characters"),
    (
        "nested range loops",
        "{% for a in range(99999) %}{% for b in range(99999) %}{% endfor %}{% endfor %}",
        "it takes longer than 0.5 s to render",
    ),
    ("percent width", "{{ '%0999999999d' % 1 }}", "a format with a width or precision of a million"),
    ("percent star width", "{{ '%*d' % (999999999, 1) }}", "taken from an argument"),
    ("brace width", "{{ '{:>999999999}'.format(1) }}", "a format with a width or precision of a million"),
    ("format filter width", "{{ '%0999999999d' | format(1) }}", "a format with a width"),
    ("center method", "{{ 'x'.center(10**8) }}", "center(100,000,000) would be larger"),
    ("center filter", "{{ 'x' | center(999999999) }}", "center(999,999,999) would be larger"),
    ("ljust method", "{{ 'x'.ljust(10**8) }}", "ljust(100,000,000) would be larger"),
    ("join of one long string", "{{ ''.join([" + BIG + "] * 1000000) }}", "would be larger than"),
    ("join filter", "{{ (['ab' * 100] * 1000) | join('-' * 1000) }}", "the joined text would be larger"),
    ("list of the same long string", "{% set x = " + BIG + " %}{{ [x, x, x, x, x] }}", "a value would be"),
    ("str of a repeated list", "{{ (['a' * 100000] * 100) | string }}", "list * 100 would be larger"),
    ("tojson of a repeated list", "{{ (['a' * 100000] * 100) | tojson }}", "list * 100 would be larger"),
    ("replace amplification", "{{ ('a' * 1000) | replace('a', 'b' * 100000) }}", "the replaced text"),
    ("indent amplification", "{{ ('\\n' * 100000) | indent('x' * 100000) }}", "the indented text"),
    ("wordwrap amplification", "{{ ('a ' * 100000) | wordwrap(1, wrapstring='x' * 100000) }}", "wrapped"),
    ("string repetition", "{{ 'ab' * 999999 }}", "str * 999,999 would be larger"),
    (
        "output in a loop",
        "{% for a in range(30) %}{{ 'a' * 100000 }}{% endfor %}",
        "it produces more than 2,000,000 characters",
    ),
    (
        "output collected by set",
        "{% set x %}{% for a in range(30) %}{{ 'a' * 100000 }}{% endfor %}{% endset %}",
        "it produces more than 2,000,000 characters",
    ),
    ("recursive macro", "{% macro m(n) %}{{ m(n) }}{% endmacro %}{{ m(1) }}", "a macro that calls itself"),
    ("lipsum", "{{ lipsum(100000) }}", "unknown variable 'lipsum'"),
    ("list mutation", "{% set l = [1] %}{{ l.append(2) }}", "access to attribute 'append' of 'list'"),
    ("dict mutation", "{% set d = {} %}{{ d.update({'a': 1}) }}", "access to attribute 'update' of 'dict'"),
    ("mro walk", "{{ ''.__class__.__mro__[1].__subclasses__() }}", "access to attribute '__class__'"),
    ("cycler globals", "{{ cycler.__init__.__globals__.os }}", "access to attribute '__init__'"),
    ("joiner globals", "{{ joiner.__init__.__globals__ }}", "access to attribute '__init__'"),
    ("namespace globals", "{{ namespace.__init__.__globals__ }}", "access to attribute '__init__'"),
    ("template self", "{{ self._TemplateReference__context }}", "'self' is not available"),
    ("format attribute walk", "{{ '{0.__class__}'.format('') }}", "__class__"),
    ("trait internals", "{{ traits.__class__.__init__.__globals__ }}", "access to attribute '__class__'"),
    ("source too long", "x" * (MAX_SOURCE_CHARS + 1), "the template is 200,001 characters long"),
]


def automation(key: str, html: str) -> str:
    return json.dumps(
        {
            "key": key,
            "name": key.title(),
            "trigger": {"event": f"Signed Up {key}"},
            "steps": [{"id": "hello", "email": {"subject": "Hi", "text": "Hello", "html": html}}],
        }
    )


def test_the_api_refuses_every_attack_and_names_step_part_and_limit(server: LiveServer) -> None:
    wrong: list[str] = []
    with server.client() as api:
        for attack, html, says in ATTACKS:
            tracemalloc.start()
            try:
                answer = api.put("/v1/automations/trap", content=automation("trap", html))
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            problems = answer.json().get("problems") or [{}] if answer.status_code == 422 else [{}]
            message = str(problems[0].get("message"))
            if answer.status_code != 422 or answer.json()["code"] != "invalid_automation":
                wrong.append(f"{attack}: {answer.status_code} {answer.text[:300]}")
            elif len(problems) != 1 or problems[0]["field"] != "steps[0].email.html":
                wrong.append(f"{attack}: {problems}")
            elif not message.startswith("html: ") or says not in message:
                wrong.append(f"{attack}: {message!r} does not say {says!r}")
            # Refused without doing the work: no template gets near what it asked for.
            if peak > 64 * 2**20:
                wrong.append(f"{attack}: {peak / 2**20:.0f} MiB while refusing")
        assert api.get("/v1/automations/trap").status_code == 404  # nothing was stored
    assert not wrong, "\n".join(wrong)


def test_the_limits_are_the_documented_ones() -> None:
    assert (MAX_SOURCE_CHARS, MAX_VALUE_CHARS, MAX_OUTPUT_CHARS, MAX_STEPS, MAX_RENDER_SECONDS) == (
        200_000,
        1_000_000,
        2_000_000,
        1_000_000,
        0.5,
    )


def test_compiling_a_huge_constant_computes_nothing() -> None:
    """Plain Jinja folds ``'a' * 400000000`` while compiling: 400 MB and seconds on every load."""
    source = "{{ 'a' * (4 * 10**8) }}"
    tracemalloc.start()
    try:
        template = EmailSandbox().from_string(source)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, f"{peak / 2**20:.0f} MiB to compile"
    with rendering(), pytest.raises(RenderLimit, match="str \\* 400,000,000 would be larger"):
        template.render()


def test_each_budget_stops_a_render_on_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    sandbox = EmailSandbox()
    with monkeypatch.context() as patched:  # the step count alone, whatever this machine's speed
        patched.setattr(sandbox_module, "MAX_RENDER_SECONDS", 60.0)
        steps = "{% for a in range(1000) %}{% for b in range(1000) %}{% endfor %}{% endfor %}"
        with rendering(), pytest.raises(RenderLimit, match="more than 1,000,000 loop iterations and calls"):
            sandbox.from_string(steps).render()
        with rendering():  # just under: 990 x 1,000 iterations and 991 range() calls
            assert sandbox.from_string(steps.replace("1000)", "990)", 1)).render() == ""
    with monkeypatch.context() as patched:  # and the clock alone
        patched.setattr(sandbox_module, "MAX_STEPS", 10**12)
        spin = "{% for a in range(99999) %}{% for b in range(99999) %}{% endfor %}{% endfor %}"
        started = time.monotonic()
        with rendering(), pytest.raises(RenderLimit, match=r"longer than 0\.5 s"):
            sandbox.from_string(spin).render()
        assert time.monotonic() - started < 5
    output = "{% for a in range(3) %}{{ 'a' * 999999 }}{% endfor %}"
    with rendering(), pytest.raises(RenderLimit, match="produces more than 2,000,000 characters"):
        sandbox.from_string(output).render()
    with rendering():
        assert len(sandbox.from_string(output.replace("3", "2")).render()) == 1_999_998
    with rendering(), pytest.raises(RenderLimit, match="larger than 1,000,000 characters"):
        sandbox.from_string("{{ 'a' * 1000001 }}").render()
    with rendering():
        assert len(sandbox.from_string("{{ 'a' * 1000000 }}").render()) == MAX_VALUE_CHARS


ORDINARY_SUBJECT = "{{ traits.first_name | default('there') | title }}, your {{ events | length }} visits"
ORDINARY_HTML = """<html><body>
<p>Ciao {{ traits.first_name | e }},</p>
{% set ns = namespace(total=0) %}
<ul>{% for e in events | sort(attribute='name') %}
  <li>{{ loop.index }}. {{ e.name | upper }} {{ '%05d' | format(e.count) }} {{ '{:>8}'.format(e.name) }}</li>
  {% set ns.total = ns.total + e.count %}
{% endfor %}</ul>
{% macro badge(label) %}<b>{{ label | center(12) }}</b>{% endmacro %}
<p>{{ badge('vip') if ns.total > 3 else 'welcome' }} · {{ (events | map(attribute='name') | join(', ')) }}</p>
<p>{{ (['a', 'b'] * 3) | join }} {{ 'x' * 40 }} {{ range(5) | list | sum }} {{ 2 ** 20 }}</p>
<p>{{ traits.plan | default('basic') | replace('basic', 'Basic') }} {{ now.year }}</p>
<a href="{{ unsubscribe_url }}">Unsubscribe</a>
</body></html>"""
VARIABLES: dict[str, Any] = {
    "traits": {"first_name": "ada <lovelace>"},
    "events": [{"name": "pricing", "count": 3}, {"name": "docs", "count": 2}],
    "unsubscribe_url": "https://shop.example/u/x",
    "now": datetime(2026, 12, 6, tzinfo=UTC),
}


def test_an_ordinary_template_renders_as_with_plain_jinja() -> None:
    """What a marketer writes (loops, filters, macros, small formats) is untouched by the budget."""
    assert template_problems(ORDINARY_SUBJECT, "Hello", ORDINARY_HTML) == []
    rendered = render_email(ORDINARY_SUBJECT, "Hello", ORDINARY_HTML, VARIABLES)
    plain = jinja2.sandbox.ImmutableSandboxedEnvironment(autoescape=True)
    assert rendered.html == plain.from_string(ORDINARY_HTML).render(VARIABLES)
    assert rendered.subject == "Ada <Lovelace>, your 2 visits"
    assert "1. DOCS 00002     docs" in rendered.html and "ada &lt;lovelace&gt;" in rendered.html
    assert "<b>    vip     </b>" in rendered.html and "ababab" in rendered.html and "1048576" in rendered.html


# -- a definition stored before the bounds: refused at send, alone --------------------------------


STORED_EARLIER = {
    "folded": "{{ 'a' * (4 * 10**8) }}",
    "loops": "{% for a in range(99999) %}{% for b in range(99999) %}{% endfor %}{% endfor %}",
    "escape": "{{ cycler.__init__.__globals__.os }}",
}


def test_a_definition_stored_earlier_fails_at_send_and_the_others_still_send(
    server: LiveServer,
    classifier: Any,
    smtp: tuple[Inbox, SmtpSettings],  # noqa: F811
) -> None:
    inbox, smtp_settings = smtp
    store = server.store
    for key, html in STORED_EARLIER.items():
        # As a version from before the template limits would have stored it: unchecked.
        save_automation(store, automation_from_data(json.loads(automation(key, html)), stored=True), "old")
    save_automation(
        store, load_automation(automation("welcome", "<p>Welcome {{ traits.first_name }}</p>")), "t"
    )
    # One contact per automation, so no frequency cap stands between a contact and its email.
    for key in [*STORED_EARLIER, "welcome"]:
        signed_up(store, classifier, key)

    tracemalloc.start()
    try:
        for key in STORED_EARLIER:
            assert get_automation(store, key)[0].key == key  # loading computes nothing
        with server.client() as api:
            page = api.get("/v1/automations/folded")
        Engine(store, smtp=smtp_settings).run_until_idle()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert page.status_code == 200
    assert peak < 64 * 2**20, f"{peak / 2**20:.0f} MiB"

    [message] = inbox.messages
    assert message["Subject"] == "Hi" and message["To"] == "welcome@example.it"
    html = message.get_body(("html",))
    assert html is not None and "Welcome Welcome" in html.get_content()
    for key, says in [
        ("folded", "would be larger than 1,000,000 characters"),
        ("loops", "longer than 0.5 s"),
        ("escape", "the sandbox forbids"),
    ]:
        stats = automation_stats(store, key)
        [hello] = stats["steps"]
        assert hello["outcomes"] == {"failed": 1} and hello["actions"] == {}, hello  # nothing queued
        [failure] = stats["failures"]  # the reason, where the editor looks
        assert failure["step"] == "hello" and failure["count"] == 1
        assert failure["error"].startswith("the html template") and says in failure["error"], failure
    assert automation_stats(store, "welcome")["steps"][0]["actions"] == {"sent": 1}


def signed_up(store: Store, classifier: Any, user: str) -> None:
    messages = [
        {
            "type": "identify",
            "userId": user,
            "traits": {"email": f"{user}@example.it", "first_name": user.title(), "marketing_consent": True},
        },
        {"type": "track", "userId": user, "event": f"Signed Up {user}"},
    ]
    store.ingest(
        [
            parse_message(
                json.dumps({**m, "messageId": str(uuid.uuid4())}).encode(),
                received_at=datetime.now(UTC),
                classifier=classifier,
            )
            for m in messages
        ]
    )


def test_every_bad_part_is_named(server: LiveServer) -> None:
    """A YAML document with two bad parts gets one problem for each, naming the part."""
    document = automation("trap", "{{ 'x' | center(999999999) }}").replace(
        '"subject": "Hi"', '"subject": "{{ 9 ** 9999999 }}"'
    )
    with server.client() as api:
        answer = api.put(
            "/v1/automations/trap", content=document, headers={"Content-Type": "application/yaml"}
        )
    assert answer.status_code == 422
    fields = sorted(p["field"] for p in answer.json()["problems"])
    assert fields == ["steps[0].email.html", "steps[0].email.subject"]
