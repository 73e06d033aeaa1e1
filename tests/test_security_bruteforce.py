"""Guessing passwords and flooding the collector: what percorso allows, over real HTTP.

* an account gets a few free failures, then lockouts that double up to a cap; while locked even
  the right password is refused (429 with ``Retry-After``); after the wait it works, and a
  success clears the count; other accounts are not affected;
* one client address gets a budget of failures per minute across all accounts; other addresses
  are not affected; ``X-Forwarded-For`` counts only from a trusted proxy;
* a password over 1 KiB is refused (400) before it is hashed, a 10 MB one too, at once;
* concurrent Argon2 checks are bounded (the gate refuses rather than queueing without end);
* the collector limits requests per key (429 ``rate_limited`` with ``Retry-After``).

The windows are shrunk with settings, and the server's clocks are the test's own: time passes
when the test says so, however slow the machine, and nothing sleeps.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import replace

import anyio
import httpx
import pytest

from percorso.config import Settings
from percorso.web.dashboard.users import add_user
from percorso.web.throttle import Backoff, Busy, Gate, RateLimiter
from tests.conftest import LiveServer

ANNA = ("anna@example.it", "a long enough secret")
ENZO = ("enzo@example.it", "another long secret")


@pytest.fixture
def overrides() -> dict[str, object]:
    """Settings a test changes: ``@pytest.mark.parametrize("overrides", [{...}])``."""
    return {}


@pytest.fixture
def settings(settings: Settings, overrides: dict[str, object]) -> Settings:
    tiny = {
        "signin_free_failures": 3,
        "signin_lockout_seconds": 1,
        "signin_lockout_max_seconds": 2,
        "signin_address_per_minute": 1000,
        "trusted_proxies": "127.0.0.1",
        "dashboard_cache_seconds": 0,
    }
    return replace(settings, **{**tiny, **overrides})  # type: ignore[arg-type]


class Clock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(server: LiveServer, settings: Settings) -> Clock:
    """The clock of the server's sign-in limits and collector limit."""
    from percorso.web.dashboard.signin import SignInGuard

    clock = Clock()
    guard = SignInGuard.from_settings(settings)
    guard.accounts = Backoff(
        settings.signin_free_failures,
        settings.signin_lockout_seconds,
        settings.signin_lockout_max_seconds,
        clock=clock,
    )
    per_minute = settings.signin_address_per_minute
    guard.addresses = RateLimiter(capacity=per_minute, rate=per_minute / 60, clock=clock)
    server.app.state.sign_in_guard = guard
    rate = settings.collect_key_per_second
    server.app.state.collect_limiter = RateLimiter(capacity=rate, rate=rate, clock=clock)
    return clock


@pytest.fixture
def site(server: LiveServer, clock: Clock) -> LiveServer:
    add_user(server.store, *ANNA, role="admin")
    add_user(server.store, *ENZO, role="viewer")
    return server


class Browser:
    """A client that signs in through the real form, from one address (via a trusted proxy)."""

    def __init__(self, site: LiveServer, address: str = "203.0.113.7", **headers: str):
        self.http = httpx.Client(
            base_url=site.url, timeout=30, headers={"X-Forwarded-For": address, **headers}
        )
        token = re.search(r'name="csrf_token" value="([^"]+)"', self.http.get("/login").text)
        assert token
        self.token = token.group(1)

    def sign_in(self, email: str, password: str) -> httpx.Response:
        form = {"email": email, "password": password, "csrf_token": self.token}
        return self.http.post("/login", data=form)


def test_an_account_is_locked_after_its_free_failures_even_for_the_right_password(
    site: LiveServer, clock: Clock
) -> None:
    browser = Browser(site)
    for _ in range(3):
        assert browser.sign_in(ANNA[0], "not the password").status_code == 401
    locked = browser.sign_in(ANNA[0], ANNA[1])  # the right password, during the lockout
    assert locked.status_code == 429 and locked.headers["retry-after"] == "1"
    assert "Too many failed sign-ins for this account. Try again in 1 second." in locked.text
    assert "percorso_session" not in locked.headers.get("set-cookie", "")
    # The same answer for an address nobody has, so a lockout does not reveal who exists.
    for _ in range(3):
        browser.sign_in("nobody@example.it", "not the password")
    assert browser.sign_in("nobody@example.it", "not the password").status_code == 429
    italian = Browser(site, **{"Accept-Language": "it"}).sign_in(ANNA[0], ANNA[1])
    assert italian.status_code == 429 and "Riprova tra 1 secondo" in italian.text
    as_json = Browser(site, Accept="application/json").sign_in(ANNA[0], ANNA[1])
    body = as_json.json()
    assert as_json.status_code == 429 and body["code"] == "rate_limited" and body["retry_after"] == 1
    assert "retry_at" in body and "Try again in 1 second" in body["message"]

    # Another account, same address: unaffected.
    assert Browser(site).sign_in(*ENZO).status_code == 303

    clock.advance(0.9)
    assert browser.sign_in(*ANNA).status_code == 429  # not yet
    clock.advance(0.1)
    assert browser.sign_in(*ANNA).status_code == 303
    # The success cleared the count: the free failures are free again.
    again = Browser(site)
    for _ in range(2):
        assert again.sign_in(ANNA[0], "not the password").status_code == 401


@pytest.mark.parametrize("overrides", [{"signin_free_failures": 100, "signin_address_per_minute": 4}])
def test_an_address_has_a_budget_across_accounts_and_others_are_unaffected(site: LiveServer) -> None:
    attacker = Browser(site, "198.51.100.9")
    for n in range(4):
        assert attacker.sign_in(f"user{n}@example.it", "guess guess guess").status_code == 401
    refused = attacker.sign_in(*ANNA)
    assert refused.status_code == 429 and "from your network" in refused.text
    assert refused.headers["retry-after"] == "15"  # one failure comes back every 15 s
    assert Browser(site, "203.0.113.50").sign_in(*ANNA).status_code == 303
    # IPv6 addresses count per /64: another address in the block shares the budget.
    v6 = Browser(site, "2001:db8:1:2::10")
    for n in range(4):
        assert v6.sign_in(f"v6-{n}@example.it", "guess guess guess").status_code == 401
    assert Browser(site, "2001:db8:1:2::99").sign_in(*ANNA).status_code == 429
    assert Browser(site, "2001:db8:1:3::1").sign_in(*ANNA).status_code == 303


@pytest.mark.parametrize(
    "overrides", [{"signin_free_failures": 100, "signin_address_per_minute": 2, "trusted_proxies": ""}]
)
def test_x_forwarded_for_is_ignored_without_a_trusted_proxy(server: LiveServer, clock: Clock) -> None:
    add_user(server.store, *ANNA, role="admin")
    statuses = []
    for n in range(4):  # a new forged address each time
        statuses.append(Browser(server, f"10.0.0.{n}").sign_in(f"u{n}@example.it", "guess guess").status_code)
    assert statuses == [401, 401, 429, 429]


def test_a_long_password_is_refused_before_it_is_hashed(site: LiveServer) -> None:
    browser = Browser(site)
    r = browser.sign_in(ANNA[0], "x" * 1025)
    assert r.status_code == 400 and "a password has at most 1,024 bytes" in r.text
    assert browser.sign_in(ANNA[0], "é" * 513).status_code == 400  # bytes, not characters
    assert browser.sign_in(ANNA[0], "x" * 1024).status_code == 401  # at the limit: checked, wrong
    started = time.monotonic()
    huge = browser.sign_in(ANNA[0], "x" * 10_000_000)
    assert huge.status_code == 400 and "at most 1,024 bytes" in huge.text
    assert time.monotonic() - started < 5
    as_json = Browser(site, Accept="application/json").sign_in(ANNA[0], "x" * 2000)
    assert as_json.status_code == 400 and as_json.json()["field"] == "password"
    # Refusals for length are not guesses: the account is not locked by them.
    assert browser.sign_in(*ANNA).status_code == 303


def test_lockouts_double_up_to_the_cap_and_are_forgotten() -> None:
    now = [0.0]
    backoff = Backoff(free=5, first=30, cap=900, forget_after=3600, clock=lambda: now[0])
    assert [backoff.strike("a") for _ in range(11)] == [0, 0, 0, 0, 30, 60, 120, 240, 480, 900, 900]
    assert backoff.wait("a") == 900 and backoff.wait("b") == 0
    now[0] += 899
    assert backoff.wait("a") == 1
    now[0] += 3602  # an hour without a failure: the count starts again
    assert backoff.strike("a") == 0
    backoff.clear("a")
    assert backoff.wait("a") == 0
    assert Backoff(free=5, first=0, cap=900).lockout(50) == 0  # 0 turns lockouts off


def test_default_limits_in_attempts_per_minute() -> None:
    """The figures docs/security.md quotes, from the default settings and a simulated clock."""
    defaults = Settings()
    now = [0.0]
    account = Backoff(
        defaults.signin_free_failures,
        defaults.signin_lockout_seconds,
        defaults.signin_lockout_max_seconds,
        clock=lambda: now[0],
    )
    per_minute = defaults.signin_address_per_minute
    address = RateLimiter(capacity=per_minute, rate=per_minute / 60, clock=lambda: now[0])

    def attempts(limiter_wait, strike, seconds: float) -> list[float]:  # type: ignore[no-untyped-def]
        times, now[0] = [], 0.0
        while now[0] < seconds:
            wait = limiter_wait()
            if wait:
                now[0] += wait
                continue
            strike()
            times.append(now[0])
        return times

    guesses = attempts(lambda: account.wait("anna"), lambda: account.strike("anna"), 24 * 3600)
    assert sum(t < 60 for t in guesses) == 6  # 5 free, then one after a 30 s lockout
    # Lockouts of 30 s, 1, 2, 4, 8 min, then the 15 min cap: 12 guesses in the first hour ...
    assert sum(t < 3600 for t in guesses) == 12
    assert len(guesses) == 12 + 92  # ... then one every 15 min: 4 an hour, 104 in a day
    spread = attempts(lambda: address.wait("x"), lambda: address.take("x"), 600)
    assert sum(t < 60 for t in spread) == 59  # a burst of 30, then one every 2 s
    assert sum(60 <= t < 120 for t in spread) == 30


def test_the_hashing_gate_refuses_rather_than_piling_up() -> None:
    async def scenario() -> list[str]:
        gate = Gate(1, queue=1, patience=0.3)
        log: list[str] = []
        holding = asyncio.Event()

        async def hold() -> None:
            async with gate.slot():
                holding.set()
                await asyncio.sleep(0.5)
                log.append("first done")

        async def try_enter(name: str) -> None:
            try:
                async with gate.slot():
                    log.append(f"{name} ran")
            except Busy:
                log.append(f"{name} busy")

        async with anyio.create_task_group() as tg:
            tg.start_soon(hold)
            await holding.wait()
            tg.start_soon(try_enter, "waiter")  # waits 0.3 s for the slot, then gives up
            await asyncio.sleep(0.05)
            tg.start_soon(try_enter, "third")  # the queue is full: refused at once
        async with gate.slot():
            log.append("free again")
        return log

    assert anyio.run(scenario) == ["third busy", "waiter busy", "first done", "free again"]


@pytest.mark.parametrize("overrides", [{"collect_key_per_second": 5}])
def test_the_collector_limits_each_key(server: LiveServer, clock: Clock) -> None:
    site = server
    event = {"type": "track", "userId": "u1", "event": "Signed Up"}
    fast = httpx.Client(base_url=site.url, auth=(site.write_key, ""), timeout=30)
    answers = [fast.post("/v1/track", json={**event, "messageId": f"m{n}"}) for n in range(8)]
    statuses = [a.status_code for a in answers]
    assert statuses[:5] == [200] * 5 and 429 in statuses[5:]
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.headers["retry-after"] == "1"
    body = refused.json()
    assert (
        body["code"] == "rate_limited"
        and body["retry_after"] == 1
        and "5 requests per second" in body["message"]
    )
    other = httpx.Client(base_url=site.url, auth=(site.secret_key, ""), timeout=30)
    assert other.post("/v1/track", json={**event, "messageId": "other"}).status_code == 200
    assert httpx.post(f"{site.url}/v1/track", json=event).status_code == 401  # no key: not counted
    clock.advance(0.2)  # a fifth of a second: one request's worth
    assert fast.post("/v1/track", json={**event, "messageId": "later"}).status_code == 200
    assert fast.post("/v1/track", json={**event, "messageId": "later-2"}).status_code == 429
    assert RateLimiter(capacity=0, rate=0).take("k") == 0  # 0 turns the limit off


def test_password_checks_past_the_queue_are_refused_with_503(
    site: LiveServer, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One check at a time, one waiting: a third sign-in is refused at once (503, Retry-After)
    instead of piling up. The check is held, not slowed: it waits for the test to let it go."""
    import threading

    from percorso.web.dashboard import signin

    real = signin.sign_in
    entered, release = threading.Event(), threading.Event()

    def held(*args: object) -> object:
        entered.set()
        assert release.wait(30)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(signin, "sign_in", held)
    guard = signin.SignInGuard.from_settings(settings)
    guard.gate = Gate(1, queue=1, patience=30)
    site.app.state.sign_in_guard = guard
    answers: dict[str, int] = {}

    def attempt(name: str, who: tuple[str, str]) -> None:
        answers[name] = Browser(site, f"203.0.113.{len(name)}").sign_in(*who).status_code

    first = threading.Thread(target=attempt, args=("first", ANNA))
    first.start()
    assert entered.wait(30)  # the first holds the only slot
    second = threading.Thread(target=attempt, args=("second-", ENZO))
    second.start()
    deadline = time.monotonic() + 30
    while guard.gate._limiter is None or guard.gate._limiter.statistics().tasks_waiting < 1:
        assert time.monotonic() < deadline, "the second never queued"
        time.sleep(0.01)
    third = Browser(site, "203.0.113.99").sign_in(*ANNA)
    assert third.status_code == 503 and third.headers["retry-after"] == "1", third.text
    release.set()
    first.join(timeout=30)
    second.join(timeout=30)
    assert answers == {"first": 303, "second-": 303}  # the queued one was served, not refused
