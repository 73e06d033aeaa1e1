"""The commands docs/dashboard.md and docs/automations.md tell people to run, run as they would
run them (a real process on a real data directory): `percorso user add|list|role|password|remove`
with a sign-in to a server on the same store, and `percorso automation
validate|apply|list|pause|resume|stats|inbox`."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import subprocess
import sys
import time
from email.message import EmailMessage
from pathlib import Path

import httpx

from tests.conftest import free_port
from tests.test_dashboard import login_token
from tests.test_durability import start_server

WELCOME = """\
key: welcome
name: Welcome
trigger: {event: Signed Up}
steps:
  - id: hello
    email: {category: transactional, subject: "Welcome", text: "Hello."}
"""


def run(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "percorso", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def sign_in(url: str, email: str, password: str) -> int:
    with httpx.Client(base_url=url, timeout=30) as client:
        form = {"email": email, "password": password, "csrf_token": login_token(client)}
        return client.post("/login", data=form).status_code


def test_user_commands(tmp_path: Path) -> None:
    env = {**os.environ, "PERCORSO_DATA_DIR": str(tmp_path)}
    env.pop("PERCORSO_DATABASE_URL", None)
    added = run(
        env,
        "user",
        "add",
        "ada@example.it",
        "--role",
        "admin",
        "--password-stdin",
        stdin="a long enough secret\n",
    )
    assert added.returncode == 0, added.stderr
    short = run(env, "user", "add", "bo@example.it", "--password-stdin", stdin="short\n")
    assert short.returncode != 0 and "password" in (short.stdout + short.stderr).lower()
    bad_role = run(
        env,
        "user",
        "add",
        "bo@example.it",
        "--role",
        "owner",
        "--password-stdin",
        stdin="a long enough secret\n",
    )
    assert bad_role.returncode != 0 and "viewer, editor, admin" in bad_role.stdout + bad_role.stderr
    listed = json.loads(run(env, "user", "list", "--format", "json").stdout)
    assert [(u["email"], u["role"]) for u in listed] == [("ada@example.it", "admin")]

    port = free_port()
    server = start_server(env, port)
    try:
        assert sign_in(f"http://127.0.0.1:{port}", "ada@example.it", "a long enough secret") == 303
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)

    assert run(env, "user", "role", "ada@example.it", "viewer").returncode == 0
    changed = run(
        env, "user", "password", "ada@example.it", "--password-stdin", stdin="another long secret\n"
    )
    assert changed.returncode == 0, changed.stderr
    assert json.loads(run(env, "user", "list", "--format", "json").stdout)[0]["role"] == "viewer"
    server = start_server(env, port)
    try:
        url = f"http://127.0.0.1:{port}"
        assert sign_in(url, "ada@example.it", "a long enough secret") == 401  # the old password is gone
        assert sign_in(url, "ada@example.it", "another long secret") == 303
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    assert run(env, "user", "remove", "ada@example.it").returncode == 0
    missing = run(env, "user", "remove", "ada@example.it")
    assert missing.returncode != 0 and "ada@example.it" in missing.stdout + missing.stderr
    assert json.loads(run(env, "user", "list", "--format", "json").stdout) == []


def test_automation_commands(tmp_path: Path) -> None:
    env = {**os.environ, "PERCORSO_DATA_DIR": str(tmp_path / "data")}
    env.pop("PERCORSO_DATABASE_URL", None)
    good, bad = tmp_path / "welcome.yaml", tmp_path / "broken.yaml"
    good.write_text(WELCOME, encoding="utf-8")
    bad.write_text(WELCOME.replace("transactional", "transactonal"), encoding="utf-8")
    assert run(env, "automation", "validate", str(good)).returncode == 0
    refused = run(env, "automation", "validate", str(bad))
    assert refused.returncode != 0 and f"{bad}:6" in refused.stdout + refused.stderr, (
        refused.stdout + refused.stderr
    )
    assert run(env, "automation", "apply", str(bad)).returncode != 0
    applied = run(env, "automation", "apply", str(good))
    assert applied.returncode == 0, applied.stderr

    def status() -> str:
        rows = json.loads(run(env, "automation", "list", "--format", "json").stdout)
        return str(next(r for r in rows if r["key"] == "welcome")["status"])

    assert status() == "active"
    assert run(env, "automation", "pause", "welcome").returncode == 0
    assert status() == "paused"
    assert run(env, "automation", "resume", "welcome").returncode == 0
    assert status() == "active"
    unknown = run(env, "automation", "pause", "nope")
    assert unknown.returncode != 0 and "nope" in unknown.stdout + unknown.stderr
    assert run(env, "automation", "stats", "welcome").returncode == 0


def test_the_inbox_prints_what_arrives(tmp_path: Path) -> None:
    smtp_port, hook_port = free_port(), free_port()
    env = {**os.environ, "PERCORSO_DATA_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "inbox.log"
    with log.open("wb") as out:
        inbox = subprocess.Popen(
            [sys.executable, "-m", "percorso", "automation", "inbox", "--port", str(smtp_port),
             "--webhook-port", str(hook_port), "--save", str(tmp_path / "saved")],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with smtplib.SMTP("127.0.0.1", smtp_port, timeout=5) as smtp:
                    message = EmailMessage()
                    message["From"], message["To"], message["Subject"] = (
                        "a@example.it",
                        "b@example.it",
                        "Benvenuta",
                    )
                    message.set_content("Ciao.")
                    smtp.send_message(message)
                break
            except OSError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        answer = httpx.post(
            f"http://127.0.0.1:{hook_port}/hook", json={"contact": 7, "note": "not from percorso"}, timeout=10
        )
        assert answer.status_code < 300
        while "Benvenuta" not in log.read_text() or "webhook  /hook" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert any((tmp_path / "saved").iterdir())
    finally:
        inbox.send_signal(signal.SIGTERM)
        inbox.wait(timeout=30)
