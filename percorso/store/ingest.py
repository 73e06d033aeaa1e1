"""Writing a batch: identity resolution and the event append, in one transaction.

Set-based on purpose: one query loads the slice of the identity graph the batch touches, the
pure rules in :mod:`percorso.identity` decide, and a handful of array statements write the
result — whatever the batch size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from percorso.events import Event
from percorso.identity import USER_ID, GraphSlice, IdentityPlan, Observation, plan_batch
from percorso.store.answers import ANSWERED, copy_answers
from percorso.store.base import Session
from percorso.store.clicks import CLICK, copy_clicks
from percorso.values import read_json

_encode = msgspec.json.encode

#: Events also kept in typed columns (store/typed.py), and the function that copies them.
TYPED_COPIES: dict[str, Callable[[Session, Sequence[str]], None]] = {
    CLICK: copy_clicks,
    ANSWERED: copy_answers,
}


def observation(event: Event) -> Observation:
    return Observation(
        anonymous_id=event.anonymous_id,
        user_id=event.user_id,
        email=event.email,
        previous_id=event.previous_id if event.type == "alias" else None,
    )


def write_batch(s: Session, events: list[Event], now: datetime) -> set[str]:
    """Resolves identities for ``events`` and appends them; returns the message ids stored."""
    unique: dict[str, Event] = {}
    for event in events:  # a retried message inside one batch counts once
        unique.setdefault(event.message_id, event)
    batch = list(unique.values())
    observations = [observation(e) for e in batch]

    s.lock_identity_graph()
    graph = load_graph_slice(s, observations)
    # Most events repeat what the graph already knows (one known identifier, or identifiers that
    # already share a contact): they change nothing, so only the rest go through the rules.
    known = graph.identities
    changing: list[int] = []
    for i, (event, obs) in enumerate(zip(batch, observations, strict=True)):
        keys = obs.identifiers()
        found = [known.get(k) for k in keys]
        if obs.previous_id is None and event.trait_values is None and event.consent is None and all(found):
            contacts = {f[1] for f in found if f is not None}
            if len(contacts) == 1:
                primary = obs.primary()
                event.identity_id = known[primary][0]
                continue
        changing.append(i)
    if changing:
        subset = [batch[i] for i in changing]
        subset_obs = [observations[i] for i in changing]
        load_user_ids(s, graph, subset_obs)
        plan = plan_batch(graph, subset_obs)
        identity_ids, contact_ids = apply_plan(s, plan, now)
        for event, identity in zip(subset, identity_ids, strict=True):
            event.identity_id = identity
        apply_profile_updates(s, subset, contact_ids, plan, now)
    stored = s.insert_events(batch)
    typed: dict[str, list[str]] = {}
    for e in batch:
        if e.type == "track" and e.event in TYPED_COPIES and e.message_id in stored:
            typed.setdefault(e.event, []).append(e.message_id)
    for name, message_ids in typed.items():
        TYPED_COPIES[name](s, message_ids)
    return stored


def load_graph_slice(s: Session, observations: list[Observation]) -> GraphSlice:
    """The stored identities among the batch's identifiers."""
    keys = {key for obs in observations for key in obs.identifiers()}
    graph = GraphSlice()
    if not keys:
        return graph
    kinds, values = zip(*keys, strict=True)
    rows = s.rows(
        "SELECT i.kind, i.value, i.identity_id, i.contact_id FROM identities i "
        "JOIN (SELECT unnest(?::TEXT[]) AS kind, unnest(?::TEXT[]) AS value) k "
        "ON i.kind = k.kind AND i.value = k.value",
        [list(kinds), list(values)],
    )
    for kind, value, identity_id, contact_id in rows:
        graph.identities[(kind, value)] = (int(identity_id), int(contact_id))
    return graph


def load_user_ids(s: Session, graph: GraphSlice, observations: list[Observation]) -> None:
    """Adds the user ids held by the contacts these observations touch (the rules need them)."""
    contacts = {
        graph.identities[k][1] for obs in observations for k in obs.identifiers() if k in graph.identities
    }
    if contacts:
        for contact_id, value in s.rows(
            "SELECT contact_id, value FROM identities WHERE kind = ? AND contact_id = ANY(?::BIGINT[])",
            [USER_ID, sorted(contacts)],
        ):
            graph.user_ids.setdefault(int(contact_id), set()).add(value)


def apply_plan(s: Session, plan: IdentityPlan, now: datetime) -> tuple[list[int], list[int]]:
    """Writes new contacts, identities and merges; returns each event's identity and contact."""
    contact_map: dict[int, int] = {}
    if plan.new_contacts:
        provisional = sorted(plan.new_contacts, key=abs)  # creation order → ascending real ids
        real = sorted(s.next_ids("contact_id_seq", len(provisional)))
        contact_map = dict(zip(provisional, real, strict=True))
        s.execute(
            "INSERT INTO contacts (contact_id, created_at, traits) SELECT unnest(?::BIGINT[]), ?, '{}'",
            [real, now],
        )

    def contact(cid: int) -> int:
        return cid if cid > 0 else contact_map[cid]

    identity_map: dict[int, int] = {}
    if plan.new_identities:
        real = sorted(s.next_ids("identity_id_seq", len(plan.new_identities)))
        identity_map = {row[0]: rid for row, rid in zip(plan.new_identities, real, strict=True)}
        s.execute(
            "INSERT INTO identities (identity_id, kind, value, contact_id, created_at) "
            "SELECT unnest(?::BIGINT[]), unnest(?::TEXT[]), unnest(?::TEXT[]), unnest(?::BIGINT[]), ?",
            [
                real,
                [row[1] for row in plan.new_identities],
                [row[2] for row in plan.new_identities],
                [contact(row[3]) for row in plan.new_identities],
                now,
            ],
        )

    if plan.merges:
        losers = list(plan.merges)
        survivors = [contact(plan.merges[c]) for c in losers]
        merge_table = "(SELECT unnest(?::BIGINT[]) AS loser, unnest(?::BIGINT[]) AS survivor) m"
        s.execute(
            f"UPDATE identities SET contact_id = m.survivor FROM {merge_table} WHERE identities.contact_id = m.loser",
            [losers, survivors],
        )
        # Contacts merged earlier into a loser follow it to the survivor.
        s.execute(
            f"UPDATE contacts SET merged_into = m.survivor FROM {merge_table} WHERE contacts.merged_into = m.loser",
            [losers, survivors],
        )
        s.execute(
            f"UPDATE contacts SET merged_into = m.survivor, merged_at = ? FROM {merge_table} "
            "WHERE contacts.contact_id = m.loser",
            [now, losers, survivors],
        )

    if plan.conflicts:
        s.execute(
            "INSERT INTO identity_conflicts (detected_at, kind, value, contact_id, other_contact_id, reason) "
            "SELECT ?, unnest(?::TEXT[]), unnest(?::TEXT[]), unnest(?::BIGINT[]), unnest(?::BIGINT[]), "
            "unnest(?::TEXT[])",
            [
                now,
                [c.identifier[0] for c in plan.conflicts],
                [c.identifier[1] for c in plan.conflicts],
                [contact(c.contact_id) for c in plan.conflicts],
                [contact(c.other_contact_id) for c in plan.conflicts],
                [c.reason for c in plan.conflicts],
            ],
        )

    identities = [i if i > 0 else identity_map[i] for i in plan.event_identity]
    contacts = [contact(c) for c in plan.event_contact]
    # Merge survivors are recorded with real ids for the profile step.
    plan.merges = {loser: contact(survivor) for loser, survivor in plan.merges.items()}
    return identities, contacts


def merge_traits(profiles: list[dict[str, Any]]) -> dict[str, Any]:
    """Combines contact profiles: traits updated more recently win key by key."""
    ordered = sorted(profiles, key=lambda p: p["traits_updated_at"] or datetime.min.replace(tzinfo=UTC))
    traits: dict[str, Any] = {}
    for profile in ordered:
        traits.update(profile["traits"])
    consent_from = max(
        (p for p in profiles if p["consent"] is not None),
        key=lambda p: p["consent_updated_at"] or datetime.min.replace(tzinfo=UTC),
        default=None,
    )
    return {
        "traits": traits,
        "traits_updated_at": ordered[-1]["traits_updated_at"] if ordered else None,
        "consent": consent_from["consent"] if consent_from else None,
        "consent_updated_at": consent_from["consent_updated_at"] if consent_from else None,
    }


def apply_profile_updates(
    s: Session, batch: list[Event], contacts: list[int], plan: IdentityPlan, now: datetime
) -> None:
    """Folds identify traits and consent into contact profiles, and profiles of merged contacts."""
    updates = [(c, e) for c, e in zip(contacts, batch, strict=True) if e.trait_values or e.consent]
    if not updates and not plan.merges:
        return
    involved = {c for c, _ in updates} | set(plan.merges) | set(plan.merges.values())
    profiles = {
        int(row["contact_id"]): {
            **row,
            "traits": read_json(row["traits"]) if isinstance(row["traits"], str) else (row["traits"] or {}),
        }
        for row in s.dicts(
            "SELECT contact_id, traits, traits_updated_at, consent, consent_updated_at FROM contacts "
            "WHERE contact_id = ANY(?::BIGINT[])",
            [sorted(involved)],
        )
    }
    changed: dict[int, dict[str, Any]] = {}
    by_survivor: dict[int, list[int]] = {}
    for loser, survivor in plan.merges.items():
        by_survivor.setdefault(survivor, []).append(loser)
    for survivor, losers in by_survivor.items():
        if not any(profiles[c]["traits"] or profiles[c]["consent"] for c in losers if c in profiles):
            continue  # nothing to carry over (typically an anonymous visitor's empty profile)
        group = [profiles[c] for c in [survivor, *losers] if c in profiles]
        merged = merge_traits(group)
        changed[survivor] = profiles[survivor] = {**profiles[survivor], **merged}

    for contact_id, event in sorted(updates, key=lambda u: u[1].timestamp):
        profile = profiles[contact_id]
        stamp = event.timestamp
        if event.trait_values:
            newer = profile["traits_updated_at"] is None or stamp >= profile["traits_updated_at"]
            traits = dict(profile["traits"])
            if newer:
                traits.update(event.trait_values)
                profile["traits_updated_at"] = stamp
            else:  # a late, older identify only fills gaps
                for key, value in event.trait_values.items():
                    traits.setdefault(key, value)
            profile["traits"] = traits
        if event.consent and (
            profile["consent_updated_at"] is None or stamp >= profile["consent_updated_at"]
        ):
            profile["consent"] = event.consent
            profile["consent_updated_at"] = stamp
        changed[contact_id] = profile

    ids = sorted(changed)
    if not ids:
        return
    s.execute(
        f"UPDATE contacts SET traits = CAST(u.traits AS {s.json_type}), traits_updated_at = u.traits_at, "
        "consent = u.consent, consent_updated_at = u.consent_at FROM (SELECT unnest(?::BIGINT[]) AS id, "
        "unnest(?::TEXT[]) AS traits, unnest(?::TIMESTAMPTZ[]) AS traits_at, unnest(?::TEXT[]) AS consent, "
        "unnest(?::TIMESTAMPTZ[]) AS consent_at) u WHERE contacts.contact_id = u.id",
        [
            ids,
            [_encode(changed[c]["traits"]).decode("utf-8") for c in ids],
            [changed[c]["traits_updated_at"] for c in ids],
            [changed[c]["consent"] for c in ids],
            [changed[c]["consent_updated_at"] for c in ids],
        ],
    )
