"""The command line: migrate, keys, contacts; settings are documented."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from typer.testing import CliRunner

from percorso.cli import app
from percorso.config import SETTING_NAMES, Settings
from percorso.events import parse_message
from percorso.store import open_store
from percorso.store.migrations import MIGRATIONS

runner = CliRunner()
ROOT = Path(__file__).parent.parent


def test_every_setting_is_documented():
    text = (ROOT / "docs" / "configuration.md").read_text()
    missing = [name for name in SETTING_NAMES if f"`{name}`" not in text]
    assert not missing, f"undocumented settings: {missing}"


def test_every_command_has_help():
    """Every command and sub-command the CLI has, found from the app itself, answers --help with
    its usage and its description (the README promises --help everywhere)."""
    import typer.main

    def commands(group: Any, path: list[str]) -> list[tuple[list[str], Any]]:
        found = [(path, group)]
        if hasattr(group, "commands"):  # a group (typer bundles its own click)
            for name, command in group.commands.items():
                found += commands(command, [*path, name])
        return found

    every = commands(typer.main.get_command(app), [])
    assert len(every) > 30, [p for p, _ in every]
    for path, command in every:
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage" in result.output, path
        described = (command.help or command.short_help or "").strip()
        assert described, f"percorso {' '.join(path)} has no description"
        assert " ".join(described.split()[:3]) in " ".join(result.output.split()), path


def test_migrate_keys_and_contacts(tmp_path, classifier):
    env = {"PERCORSO_DATA_DIR": str(tmp_path)}
    result = runner.invoke(app, ["migrate"], env=env)
    assert result.exit_code == 0 and f"schema version {len(MIGRATIONS)}" in result.output
    assert all(f"applied migration {m.version}" in result.output for m in MIGRATIONS)
    again = runner.invoke(app, ["migrate"], env=env)
    assert again.exit_code == 0 and "applied migration" not in again.output
    result = runner.invoke(app, ["keys", "create", "--kind", "write", "--name", "site"], env=env)
    assert result.exit_code == 0 and result.output.strip().splitlines()[-1].startswith("wk_")
    listed = json.loads(runner.invoke(app, ["keys", "list", "--format", "json"], env=env).output)
    assert [(k["kind"], k["name"]) for k in listed] == [("write", "site")]
    bad = runner.invoke(app, ["keys", "revoke", "wk_nothing"], env=env)
    assert bad.exit_code == 1 and "no active key" in bad.output
    # Web origins: normalised, validated by name, replaced as a whole.
    shop = runner.invoke(
        app,
        ["keys", "create", "--kind", "write", "--name", "shop", "--origin", "https://Shop.Example/"],
        env=env,
    )
    assert shop.exit_code == 0, shop.output
    wrong = runner.invoke(
        app, ["keys", "create", "--kind", "write", "--name", "x", "--origin", "shop.example"], env=env
    )
    assert wrong.exit_code == 1 and "use http:// or https://" in wrong.output
    listed = json.loads(runner.invoke(app, ["keys", "list", "--format", "json"], env=env).output)
    assert [k["origins"] for k in listed] == ["", "https://shop.example"]
    site_id = listed[0]["id"]
    changed = runner.invoke(app, ["keys", "origins", site_id, "http://127.0.0.1:8080", "*"], env=env)
    assert changed.exit_code == 0 and "http://127.0.0.1:8080, *" in changed.output
    listed = json.loads(runner.invoke(app, ["keys", "list", "--format", "json"], env=env).output)
    assert listed[0]["origins"] == "http://127.0.0.1:8080 *"
    assert runner.invoke(app, ["keys", "origins", site_id], env=env).exit_code == 0

    store = open_store(Settings(data_dir=tmp_path))
    messages = [
        {"type": "page", "anonymousId": "a1", "messageId": "1", "timestamp": "2026-01-01T10:00:00Z"},
        {
            "type": "identify",
            "anonymousId": "a1",
            "userId": "u1",
            "messageId": "2",
            "timestamp": "2026-01-01T10:05:00Z",
            "traits": {"email": "lucia@example.it"},
        },
    ]
    store.ingest(
        [
            parse_message(msgspec.json.encode(m), received_at=datetime.now(UTC), classifier=classifier)
            for m in messages
        ]
    )
    store.close()

    shown = runner.invoke(app, ["contacts", "show", "lucia@example.it", "--format", "json"], env=env)
    assert shown.exit_code == 0, shown.output
    profile = json.loads(shown.output)[0]
    assert profile["events"] == 2 and [e["messageId"] for e in profile["timeline"]] == ["2", "1"]
    found = json.loads(
        runner.invoke(app, ["contacts", "search", "lucia", "--format", "json"], env=env).output
    )
    assert [c["email"] for c in found] == ["lucia@example.it"]
    missing = runner.invoke(app, ["contacts", "show", "nobody@example.it"], env=env)
    assert missing.exit_code == 1 and "no contact" in missing.output
    exported = json.loads(runner.invoke(app, ["contacts", "export", "u1"], env=env).output)
    assert len(exported["events"]) == 2
    erased = runner.invoke(app, ["contacts", "erase", "u1", "--yes"], env=env)
    assert erased.exit_code == 0 and "2 events" in erased.output
    assert runner.invoke(app, ["contacts", "show", "u1"], env=env).exit_code == 1


def test_bad_configuration_is_a_clear_error(tmp_path):
    result = runner.invoke(
        app, ["migrate"], env={"PERCORSO_DATABASE_URL": "mysql://x", "PERCORSO_DATA_DIR": str(tmp_path)}
    )
    assert result.exit_code == 1 and "is not supported" in result.output
    result = runner.invoke(
        app, ["migrate"], env={"PERCORSO_POOL_SIZE": "many", "PERCORSO_DATA_DIR": str(tmp_path)}
    )
    assert result.exit_code == 1 and "PERCORSO_POOL_SIZE='many' is not a whole number" in result.output
    unreachable = runner.invoke(
        app, ["migrate"], env={"PERCORSO_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/x"}
    )
    assert unreachable.exit_code == 1 and "cannot connect to PostgreSQL" in unreachable.output


def test_version_is_the_installed_packages() -> None:
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"percorso {version('percorso')}"
