"""The demo walkthrough (docs/demo.md) end to end at small scale: the three example automations
replayed over the demo's last days on a simulated clock send to a real SMTP server (aiosmtpd),
at the right simulated times; confirmations stop the reminders; the stats show the holdout."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from typer.testing import CliRunner

from percorso.automation.actions.email import SmtpSettings
from percorso.automation.inbox import WEBHOOK_SECRET_ENV, LocalInbox
from percorso.automation.stats import automation_stats
from percorso.demo.generator import DemoSpec, stories
from percorso.demo.replay import replay_demo
from percorso.experiments.automation import automation_experiment
from percorso.store import Store
from tests.conftest import free_port

SPEC = DemoSpec(contacts=400, seed=7, end=datetime(2026, 11, 20, tzinfo=UTC))
STEP = timedelta(minutes=10)
ROME = ZoneInfo("Europe/Rome")
REMINDER = "one click left to confirm your account"
REMINDER_B = "your Casa Aurora account is waiting for you"  # the A/B test's second subject line
BENEFITS = "What your Casa Aurora account gives you"


def after_quiet_hours(moment: datetime) -> datetime:
    """The examples hold emails between 21:00 and 08:00 in Rome (to the second: a Date header's)."""
    local = moment.astimezone(ROME)
    if 8 <= local.hour < 21:
        return moment.replace(microsecond=0)
    day = local.date() + timedelta(days=1 if local.hour >= 21 else 0)
    return datetime(day.year, day.month, day.day, 8, tzinfo=ROME).astimezone(UTC)


def sent_at(message: Any) -> datetime:
    return parsedate_to_datetime(str(message["Date"])).astimezone(UTC)


def contact_facts(store: Store) -> dict[str, dict[str, Any]]:
    """email → contact id, when they entered the reminder automation and in which group, and
    when they confirmed."""
    with store.session() as s:
        enrolled = s.rows(
            "SELECT i.value, n.contact_id, n.entered_at, n.variant FROM enrollments n JOIN identities i "
            "ON i.contact_id = n.contact_id AND i.kind = 'email' WHERE n.automation_key = 'registration-reminder'"
        )
        confirmed = dict(
            s.rows(
                "SELECT i.contact_id, min(e.timestamp) FROM events e JOIN identities i ON i.identity_id = e.identity_id "
                "WHERE e.event = 'Registration Confirmed' GROUP BY i.contact_id"
            )
        )
    return {
        str(email): {
            "contact": contact,
            "entered": entered,
            "variant": variant,
            "confirmed": confirmed.get(contact),
        }
        for email, contact, entered, variant in enrolled
    }


def test_reminders_arrive_at_simulated_times_and_confirmations_stop_them(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(WEBHOOK_SECRET_ENV, "test-secret")
    with LocalInbox(smtp_port=free_port(), webhook_port=None) as inbox:
        smtp = SmtpSettings(
            host="127.0.0.1", port=inbox.smtp_port, sender="Casa Aurora <ciao@casa-aurora.example>"
        )
        report = replay_demo(store, SPEC, days=14, smtp=smtp, base_url="http://percorso.test", step=STEP)
        emails = list(inbox.emails)
    assert report.start == datetime(2026, 11, 6, tzinfo=UTC) and report.replayed > 1000
    facts = contact_facts(store)
    reminders = [m for m in emails if str(m["Subject"]).endswith((REMINDER, REMINDER_B))]
    follow_ups = [m for m in emails if m["Subject"] == BENEFITS]
    assert len(reminders) >= 5 and follow_ups

    # Each reminder went out 4 simulated hours after the registration was seen (held to 08:00 in
    # Rome when that fell at night), dated with the simulated time.
    for message in reminders:
        who = facts[str(message["To"])]
        assert sent_at(message) == after_quiet_hours(who["entered"] + timedelta(hours=4))
    # Nobody was reminded after confirming, and the held-out group got nothing at all.
    for message in [*reminders, *follow_ups]:
        who = facts[str(message["To"])]
        assert who["variant"] in ("treatment/one-click", "treatment/waiting")
        assert who["confirmed"] is None or who["confirmed"] > sent_at(message)
    # The registered-but-never-confirmed person: the reminder, then the follow-up two days later.
    story = stories(SPEC)[0]
    subjects = [str(m["Subject"]) for m in emails if m["To"] == story.email]
    assert len(subjects) == 2 and subjects[0].endswith((REMINDER, REMINDER_B)) and subjects[1] == BENEFITS
    mine = sorted(sent_at(m) for m in emails if m["To"] == story.email)
    assert mine[1] == after_quiet_hours(mine[0] + timedelta(days=2))
    # The newsletter subscriber who abandoned registration got a nudge, on the site and by email.
    abandoned = stories(SPEC)[1]
    assert [str(m["Subject"]) for m in emails if m["To"] == abandoned.email] == [
        "Hi, your account is almost ready"
    ]

    stats = automation_stats(store, "registration-reminder")
    steps = {s["id"]: s for s in stats["steps"]}
    assert steps["pause"]["outcomes"]["goal"] > 0  # confirmed before the reminder
    assert steps["confirmed"]["outcomes"]["goal"] > 0  # confirmed after it: no follow-up
    # the subject-line test: each reminder went out by one of its two steps, and both were used
    sent = [steps[k]["actions"].get("sent", 0) for k in ("reminder", "reminder-named")]
    assert sum(sent) == len(reminders) and min(sent) > 0
    assert sum(str(m["Subject"]).endswith(REMINDER_B) for m in reminders) == sent[1]
    assert (
        steps["reminder"]["outcomes"].get("held", 0) + steps["reminder-named"]["outcomes"].get("held", 0) > 0
    )
    experiment = automation_experiment(store, "registration-reminder")
    arms = {a["name"]: a for a in experiment["arms"]}
    assert arms["one-click"]["exposed"] + arms["waiting"]["exposed"] == steps["subject"]["entered"] > 0
    assert experiment["comparisons"][0]["difference_interval"] is not None
    assert experiment["verdict"]["en"] and experiment["verdict"]["it"]
    assert steps["control"]["outcomes"]["holdout"] == stats["totals"]["holdout"] > 0
    uplift = stats["uplift"]
    assert uplift is not None and uplift["holdout"]["contacts"] == stats["totals"]["holdout"]
    assert uplift["ci95"][0] <= uplift["uplift"] <= uplift["ci95"][1]
    # The other two examples ran too: an on-site nudge, and the membership explanation.
    by_key = {a["automation"]: a for a in report.automations}
    assert by_key["abandoned-registration"]["onsite"] >= 1
    assert by_key["membership-explainer"]["enrolled"] >= 1


def test_the_walkthrough_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``percorso demo --automations`` against the inbox, then ``percorso automation stats``."""
    from percorso.cli import app

    runner = CliRunner()
    monkeypatch.setenv(WEBHOOK_SECRET_ENV, "test-secret")
    env = {"PERCORSO_DATA_DIR": str(tmp_path), "COLUMNS": "200", "PERCORSO_SMTP_PORT": str(free_port())}
    with LocalInbox(smtp_port=free_port(), webhook_port=None) as inbox:
        refused = runner.invoke(app, ["demo", "--contacts", "300", "--automations", "--no-serve"], env=env)
        assert refused.exit_code == 1 and "no SMTP server answers" in refused.output
        env["PERCORSO_SMTP_PORT"] = str(inbox.smtp_port)
        args = ["demo", "--contacts", "300", "--automations", "--replay-days", "7", "--no-serve"]
        result = runner.invoke(app, args, env=env)
        assert result.exit_code == 0, result.output
        assert "registration-reminder" in result.output and "percorso automation stats" in result.output
        assert any(str(m["Subject"]).endswith((REMINDER, REMINDER_B)) for m in inbox.emails)
    again = runner.invoke(app, args, env=env)
    assert again.exit_code == 1 and "--fresh" in again.output
    stats = runner.invoke(app, ["automation", "stats", "registration-reminder", "--format", "json"], env=env)
    assert stats.exit_code == 0, stats.output
    data = json.loads(stats.output)
    assert data["totals"]["enrolled"] >= 1 and {s["id"] for s in data["steps"]} >= {"control", "reminder"}
    table = runner.invoke(app, ["automation", "stats", "registration-reminder"], env=env)
    assert "held out" in table.output
