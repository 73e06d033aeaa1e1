"""Shared fixtures: a ``store`` on both engines, a live server over real HTTP, keys."""

from __future__ import annotations

import functools
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn

from percorso.channels import ChannelClassifier, load_rules
from percorso.config import Settings
from percorso.events import Limits
from percorso.store import Store, open_store
from percorso.store.duckdb import DuckDBStore
from percorso.store.postgres import PostgresStore

PG_ADMIN_URL = os.environ.get("PERCORSO_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ENGINES = ["duckdb", "postgres"]


def _pg_unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"PostgreSQL is required in CI and is not usable: {reason}")
    pytest.skip(f"PostgreSQL not available: {reason}")


def create_pg_database(prefix: str = "percorso_test") -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        _pg_unavailable(str(exc))
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


def drop_pg_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    url = create_pg_database()
    yield url
    drop_pg_database(url)


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def settings(engine: str, request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    # Tests drive the automation engine themselves, with a clock they move by hand.
    if engine == "postgres":
        return Settings(
            data_dir=tmp_path,
            database_url=request.getfixturevalue("pg_url"),
            pool_size=4,
            automation_worker=False,
        )
    return Settings(data_dir=tmp_path, automation_worker=False)


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    """An empty, migrated store on each engine (the conformance suite's centre)."""
    s = open_store(settings)
    if isinstance(s, PostgresStore):
        s.reset()
    yield s
    s.close()


@pytest.fixture(scope="session")
def classifier() -> ChannelClassifier:
    return ChannelClassifier(load_rules())


@pytest.fixture(scope="session")
def limits() -> Limits:
    return Limits()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiveServer:
    url: str
    store: Store
    write_key: str
    secret_key: str
    app: Any = None  # the FastAPI application, for a test that sets its clocks

    def client(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, auth=(key or self.secret_key, ""), timeout=30)


@pytest.fixture
def server(store: Store, settings: Settings) -> Iterator[LiveServer]:
    """The real application under uvicorn on a loopback port, sharing the test's store."""
    from percorso.web.app import create_app
    from percorso.web.throttle import proxy_options

    port = free_port()
    app = create_app(settings, store)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        **proxy_options(settings.trusted_proxies),  # as `percorso serve` runs it
    )
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not instance.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.02)
    _, write_key = store.create_api_key("write", "tests")
    _, secret_key = store.create_api_key("secret", "tests")
    yield LiveServer(f"http://127.0.0.1:{port}", store, write_key, secret_key, app)
    instance.should_exit = True
    thread.join(timeout=10)


class _QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        return None


@contextmanager
def static_sites(root: Path, count: int = 1) -> Iterator[list[str]]:
    """``count`` static web sites serving ``root``, each on its own localhost port (origin)."""
    servers = []
    for _ in range(count):
        site = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietFiles, directory=str(root)))
        threading.Thread(target=site.serve_forever, daemon=True).start()
        servers.append(site)
    try:
        yield [f"http://127.0.0.1:{s.server_port}" for s in servers]
    finally:
        for site in servers:
            site.shutdown()
            site.server_close()


def chromium_path() -> str | None:
    return os.environ.get("PERCORSO_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def chromium() -> Iterator[object]:
    """Debian's Chromium, driven by Playwright (no browser download), one per test module:
    Playwright's sync API runs an event loop of its own for as long as it is open, and other
    modules' tests run asyncio in the same thread."""
    path = chromium_path()
    if path is None:
        if IN_CI:
            pytest.fail("Chromium is required in CI (apt-get install chromium) and was not found")
        pytest.skip("Chromium not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if IN_CI:
            pytest.fail("playwright is required in CI (pip install -e '.[dev]')")
        pytest.skip("playwright is not installed")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=["--no-sandbox", "--disable-gpu"])
        yield browser
        browser.close()


__all__ = ["DuckDBStore", "LiveServer", "create_pg_database", "drop_pg_database", "free_port"]


#: Tests that passed, per store and in the browser: CI must not lose a whole kind silently.
RAN: dict[str, int] = {"duckdb": 0, "postgres": 0, "chromium": 0}
BROWSER_FIXTURES = {"chromium", "browser", "page"}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when != "call" or not report.passed:
        return
    for engine in ENGINES:
        if f"[{engine}" in report.nodeid or f"-{engine}]" in report.nodeid or f"-{engine}-" in report.nodeid:
            RAN[engine] += 1
    if BROWSER_FIXTURES & set(getattr(report, "fixturenames", ())):
        RAN["chromium"] += 1


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    outcome.get_result().fixturenames = tuple(getattr(item, "fixturenames", ()))  # type: ignore[attr-defined]


def _whole_suite(config: pytest.Config) -> bool:
    """The run CI makes: every test, no file, node or -k selection."""
    args = [a for a in config.args if not a.startswith("-")]
    return (
        not config.option.collectonly
        and not config.option.keyword
        and not config.option.markexpr
        and args in ([], ["tests"], [str(Path(__file__).parent)])
    )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if IN_CI and _whole_suite(session.config) and exitstatus == 0 and not all(RAN.values()):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    from tests import fuzz_tally

    if fuzz_tally.CASES:
        terminalreporter.section("fuzzing")
        for line in fuzz_tally.lines():
            terminalreporter.write_line(line)
    terminalreporter.section("tests passed per store and in the browser")
    for kind, count in RAN.items():
        terminalreporter.write_line(f"{kind}: {count}")
    if IN_CI and _whole_suite(config) and not all(RAN.values()):
        missing = ", ".join(k for k, n in RAN.items() if not n)
        terminalreporter.write_line(f"CI ran no test on: {missing}; failing the run", red=True)


@functools.cache
def _demo_events(spec: Any) -> tuple[Any, ...]:
    from percorso.collect.loader import parse_one
    from percorso.demo.generator import generate

    classifier = ChannelClassifier(load_rules())
    limits = Limits()
    return tuple(parse_one(m, classifier, limits, "demo") for person in generate(spec) for m in person)


def load_demo_events(store: Store, spec: Any) -> int:
    """The demo dataset ``load_demo`` stores, generated and parsed once per test run and stored
    into each test's store (generating and parsing are two thirds of loading it; test_demo.py
    covers ``load_demo`` and its collector path). Returns the events stored."""
    import copy

    if spec.contacts > 2_000:  # too many to keep in memory for the whole run
        from percorso.demo.command import load_demo

        return int(load_demo(store, spec)["stored"])
    events = [copy.copy(e) for e in _demo_events(spec)]  # ingesting sets each copy's identity
    stored = 0
    for i in range(0, len(events), 20_000):
        stored += len(store.ingest(events[i : i + 20_000]))
    store.analyze()
    return stored
