"""The engine's shared part (:class:`EngineCore`): the definitions it has loaded, contacts'
profiles, matching rules, the enrolment log, finishing and waiting, and writing a batch. The
three loops (:mod:`~percorso.automation.walk`, :mod:`~percorso.automation.timers`,
:mod:`~percorso.automation.delivery`) are built on it; actions and triggers see only it."""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import msgspec

from percorso.analytics.personas import rule_sql
from percorso.automation.definition import Automation, Step
from percorso.automation.state import (
    LOG_COLUMNS,
    ONSITE_COLUMNS,
    OUTBOX_CHANNEL,
    OUTBOX_COLUMNS,
    Batch,
    Clock,
    EngineSettings,
    Enrollment,
    Loaded,
    Profile,
    StepFailed,
)
from percorso.automation.store import (
    ENROLLMENT_COLUMNS,
    decode_definition,
    insert_rows,
    instance_secret,
    update_enrollments,
)
from percorso.journey.definition import duration_seconds
from percorso.store import Store
from percorso.store.base import Session
from percorso.values import read_json

log = logging.getLogger("percorso.automation")


class EngineCore:
    """The state and the helpers every loop shares."""

    def __init__(
        self,
        store: Store,
        *,
        clock: Clock | None = None,
        settings: EngineSettings | None = None,
        smtp: Any = None,
        classifier: Any = None,
    ):
        from percorso.automation.actions.email import SmtpSettings
        from percorso.channels import ChannelClassifier, load_rules

        self.store = store
        self.clock = clock or Clock()
        self.settings = settings or EngineSettings()
        self.smtp = smtp or SmtpSettings.from_env()
        self.classifier = classifier or ChannelClassifier(load_rules(None))
        self._loaded: dict[str, Loaded] = {}
        self._stamp: Any = None
        self._secret: str | None = None
        self._seen: dict[str, datetime] = {}
        self._last_rescan = datetime.min.replace(tzinfo=UTC)
        self._last_reclaim = -float("inf")
        self._queued = False
        self._batch_local = threading.local()
        #: Set when messages were queued: wakes the sender (:class:`AutomationWorker`).
        self.outbox_ready = threading.Event()
        self.stats: dict[str, int] = defaultdict(int)

    def automations(self) -> dict[str, Loaded]:
        """Every stored automation with all its versions (reloaded when one changes)."""
        with self.store.session() as s:
            stamp = s.rows("SELECT count(*), max(updated_at), max(version) FROM automations")[0]
            if stamp == self._stamp:
                return self._loaded
            # oldest first: when two automations reach one contact together, the older one acts first
            # (and takes the frequency cap), the same on every run and engine
            heads = s.rows(
                "SELECT automation_key, version, status, created_at FROM automations ORDER BY created_at, automation_key"
            )
            versions = s.rows("SELECT automation_key, version, definition FROM automation_versions")
        loaded: dict[str, Loaded] = {}
        for key, version, status, created_at in heads:
            loaded[key] = Loaded(key, int(version), str(status), {}, created_at)
        for key, version, definition in versions:
            if key in loaded:
                loaded[key].versions[int(version)] = decode_definition(definition, key)
        self._loaded, self._stamp = loaded, stamp
        return loaded

    @property
    def secret(self) -> str:
        if self._secret is None:
            self._secret = instance_secret(self.store, "link_secret")
        return self._secret

    def _prepare(self, batch: Batch, contacts: Iterable[int]) -> None:
        batch.contacts = sorted(set(contacts))
        self._batch_local.profiles = {}  # nothing cached from a batch that failed

    def _live_contacts(self, s: Session, contacts: set[int]) -> dict[int, int]:
        """Each contact id mapped to the contact it was merged into (or to itself)."""
        live = {c: c for c in contacts}
        ids = sorted(contacts)
        for start in range(0, len(ids), 1000):
            among, params = s.member("contact_id", ids[start : start + 1000])
            live.update(
                (int(c), int(m))
                for c, m in s.rows(
                    f"SELECT contact_id, merged_into FROM contacts WHERE {among} AND merged_into IS NOT NULL",
                    params,
                )
            )
        return live

    def matches(self, s: Session, batch: Batch, rule: Any, contact: int) -> bool:
        """Whether ``contact`` matches ``rule`` (an audience or a condition) as of the batch's time.

        The first question about a rule is answered for every contact of the batch in one query;
        nothing the batch decides is written before it ends, so later answers are the same."""
        known = batch.matched.get(id(rule))
        if known is None or contact not in known[0]:
            pool = sorted({*batch.contacts, contact}) if known is None else [contact]
            found: set[int] = set()
            for start in range(0, len(pool), 1000):
                sql = rule_sql(s, rule, batch.now, pool[start : start + 1000])
                found.update(int(r[0]) for r in s.rows(sql.text, sql.params))
            if known is None:
                known = batch.matched[id(rule)] = (set(pool), found)
            else:
                known[0].add(contact)
                known[1].update(found)
        return contact in known[1]

    def marketing_emails(self, s: Session, batch: Batch, contact: int, since: datetime) -> int:
        """Marketing emails queued or sent to ``contact`` since ``since`` (frequency caps), not
        counting this batch's; asked for every contact of the batch at once."""
        known = batch.capped.get(since)
        if known is None or contact not in known[0]:
            pool = sorted({*batch.contacts, contact}) if known is None else [contact]
            counts: dict[int, int] = {}
            for start in range(0, len(pool), 1000):
                among, params = s.member("contact_id", pool[start : start + 1000])
                counts.update(
                    (int(c), int(n))
                    for c, n in s.rows(
                        f"SELECT contact_id, count(*) FROM outbox WHERE {among} AND channel = 'email' "
                        "AND category = 'marketing' AND status IN ('pending', 'sending', 'sent') "
                        "AND created_at > ? GROUP BY contact_id",
                        [*params, since],
                    )
                )
            if known is None:
                known = batch.capped[since] = (set(pool), counts)
            else:
                known[0].add(contact)
                known[1].update(counts)
        return known[1].get(contact, 0)

    def _new_enrollment_id(self, s: Session, batch: Batch) -> int:
        if not batch.ids:
            # A few at a time, more as the batch enrolls more; unused ones are gaps, as in any sequence.
            count = min(max(16, batch.taken), 1000)
            batch.ids = s.next_ids("enrollment_id_seq", count)[::-1]
            batch.taken += count
        return batch.ids.pop()

    def _wait(self, batch: Batch, enrollment: Enrollment, step: Step, until: datetime) -> None:
        enrollment.status = "waiting"
        enrollment.due_at = until
        self._log(batch, enrollment, step.id, "waiting", until.isoformat())

    def _finish(self, enrollment: Enrollment, batch: Batch, status: str, reason: str) -> None:
        enrollment.status = status
        enrollment.exit_reason = reason
        enrollment.exited_at = batch.now
        enrollment.due_at = None
        enrollment.waiting_since = None
        enrollment.dirty = True
        batch.touched[enrollment.enrollment_id] = enrollment
        if status == "done":
            self._log(batch, enrollment, "end", "completed", None)

    def _log(self, batch: Batch, enrollment: Enrollment, step: str, outcome: str, detail: str | None) -> None:
        enrollment.seq += 1
        enrollment.dirty = True
        batch.touched[enrollment.enrollment_id] = enrollment
        batch.logs.append(
            [
                enrollment.enrollment_id,
                enrollment.seq,
                enrollment.automation_key,
                enrollment.live_contact,
                batch.now,
                step,
                outcome,
                detail[:500] if detail else None,
            ]
        )

    def _wait_until(
        self, s: Session, enrollment: Enrollment, step: Step, pool: Sequence[int] = ()
    ) -> datetime | None:
        assert step.wait_until is not None
        profile = self.profile(s, enrollment.live_contact, pool)
        raw = profile.traits.get(step.wait_until.trait) if profile else None
        if not isinstance(raw, str):
            return None
        try:
            when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        try:
            if step.wait_until.before:
                when -= timedelta(seconds=duration_seconds(step.wait_until.before))
            if step.wait_until.after:
                when += timedelta(seconds=duration_seconds(step.wait_until.after))
            return when.astimezone(UTC)
        except OverflowError:
            moved = step.wait_until.before or step.wait_until.after
            raise StepFailed(
                f"trait {step.wait_until.trait} is {raw[:40]!r}: {moved} from it is outside the calendar"
            ) from None

    def _quiet_until(
        self,
        s: Session,
        automation: Automation,
        enrollment: Enrollment,
        now: datetime,
        pool: Sequence[int] = (),
    ) -> datetime | None:
        """When the contact's quiet hours end, if ``now`` is inside them (else None)."""
        quiet = automation.quiet_hours
        assert quiet is not None
        profile = self.profile(s, enrollment.live_contact, pool)
        zone_name = (profile.traits.get(quiet.timezone_trait) if profile else None) or quiet.default_timezone
        try:
            zone = ZoneInfo(str(zone_name))
        except (KeyError, ValueError, OSError):
            zone = ZoneInfo(quiet.default_timezone)
        local = now.astimezone(zone)
        start = local.replace(hour=int(quiet.start[:2]), minute=int(quiet.start[3:]), second=0, microsecond=0)
        end = local.replace(hour=int(quiet.end[:2]), minute=int(quiet.end[3:]), second=0, microsecond=0)
        if start < end:  # e.g. 13:00-15:00
            inside = start <= local < end
        else:  # crosses midnight, e.g. 21:00-08:00
            inside = local >= start or local < end
            if local >= start:
                end += timedelta(days=1)
        return end.astimezone(UTC) if inside else None

    def profile(self, s: Session, contact_id: int, pool: Sequence[int] = ()) -> Profile | None:
        """The contact's profile (traits, consent, identifiers, unsubscribes), following a merge.

        Cached until the batch is written; on a miss every uncached contact of ``pool`` (the
        batch's contacts) is loaded too, in four queries whatever their number."""
        # Per thread: a request enrolling through the API must not read the profiles a running
        # batch has changed but not committed.
        cache: dict[int, Profile | None] | None = getattr(self._batch_local, "profiles", None)
        if cache is None:
            cache = self._batch_local.profiles = {}
        if contact_id in cache:
            return cache[contact_id]
        wanted = {c for c in pool if c not in cache}
        wanted.add(contact_id)
        ids = sorted(wanted)
        for start in range(0, len(ids), 1000):
            self._load_profiles(s, ids[start : start + 1000], cache)
        return cache[contact_id]

    def load_profile(self, s: Session, contact_id: int) -> Profile | None:
        """The contact's profile read now, outside any batch's cache (the delivery thread)."""
        found: dict[int, Profile | None] = {}
        self._load_profiles(s, [contact_id], found)
        return found[contact_id]

    def _load_profiles(self, s: Session, contacts: list[int], cache: dict[int, Profile | None]) -> None:
        among, params = s.member("c.contact_id", sorted(set(contacts)))
        live: dict[int, int] = {}
        rows: dict[int, tuple[Any, ...]] = {}
        for contact, live_id, raw, consent in s.rows(
            "SELECT c.contact_id, l.contact_id, l.traits, l.consent FROM contacts c "
            f"JOIN contacts l ON l.contact_id = coalesce(c.merged_into, c.contact_id) WHERE {among}",
            params,
        ):
            live[int(contact)] = int(live_id)
            rows[int(live_id)] = (live_id, raw, consent)
        for contact in contacts:
            cache.setdefault(contact, None)  # erased
        if not live:
            return
        among, params = s.member("contact_id", sorted(rows))
        identifiers: dict[int, dict[str, str]] = defaultdict(dict)
        for c, kind, value in s.rows(
            f"SELECT contact_id, kind, min(value) FROM identities WHERE {among} GROUP BY contact_id, kind",
            params,
        ):
            identifiers[int(c)][kind] = value
        unsubscribed: dict[int, set[str]] = defaultdict(set)
        for c, channel in s.rows(f"SELECT contact_id, channel FROM unsubscribes WHERE {among}", params):
            unsubscribed[int(c)].add(channel)
        profiles: dict[int, Profile] = {}
        for live_id, (_, raw, consent) in rows.items():
            decoded = read_json(raw)
            traits = decoded if isinstance(decoded, dict) else {}
            email = traits.get("email") if isinstance(traits.get("email"), str) else None
            ids = identifiers[live_id]
            profiles[live_id] = Profile(
                contact_id=live_id,
                traits=traits,
                consent=consent,
                email=ids.get("email") or email,
                user_id=ids.get("user_id"),
                anonymous_id=ids.get("anonymous_id"),
                unsubscribed=unsubscribed[live_id],
            )
        for contact, live_id in live.items():
            cache[contact] = profiles.get(live_id)

    def _flush(self, s: Session, batch: Batch) -> None:
        new = [e.row() for e in batch.touched.values() if e.new]
        changed = [e.row() for e in batch.touched.values() if e.dirty and not e.new]
        if new:
            insert_rows(s, "enrollments", ENROLLMENT_COLUMNS, new)
        if changed:
            update_enrollments(s, changed)
        if batch.logs:
            insert_rows(s, "enrollment_log", LOG_COLUMNS, batch.logs)
        if batch.outbox:
            insert_rows(s, "outbox", OUTBOX_COLUMNS, batch.outbox, conflict=" ON CONFLICT DO NOTHING")
            s.notify(OUTBOX_CHANNEL)  # senders in other processes
            self._queued = True  # this process's sender, once the caller has committed
        if batch.onsite:
            insert_rows(
                s, "onsite_messages", ONSITE_COLUMNS, batch.onsite, conflict=" ON CONFLICT DO NOTHING"
            )
        for contact_id, traits in batch.traits.items():
            s.execute(
                "UPDATE contacts SET traits = ?, traits_updated_at = ? WHERE contact_id = ?",
                [msgspec.json.encode(traits).decode(), batch.now, contact_id],
            )
        self._batch_local.profiles = {}
        for e in batch.touched.values():
            e.new = e.dirty = False

    def enroll_found(self, s: Session, item: Loaded, found: list[tuple[int, str]], now: datetime) -> int:
        """Enrolls the contacts a trigger found (the walking loop does: :mod:`percorso.automation.walk`)."""
        raise NotImplementedError
