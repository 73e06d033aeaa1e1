"""Identity resolution rules: which identifiers belong to the same contact (pure, no I/O).

The identity graph links three kinds of identifier — ``anonymous_id``, ``user_id`` and
``email`` — to contacts. Events never change: they keep the identifiers they arrived with,
and analytics resolve them through this graph at query time, so a merge is a change to a
small table, not a rewrite of history.

Rules (see docs/identity.md):

* every identifier seen together on one event belongs to one contact (Segment's behaviour);
* email is the key identifier: an email already known links the event to that contact;
* two contacts with *different* user ids never merge implicitly — the link is refused and
  reported as a conflict — only an explicit ``alias`` call merges them;
* when two contacts merge, the older one survives (smallest contact id), so ids are stable.

:class:`IdentityPlanner` applies these rules to a batch of observations against the part of
the graph the batch touches, and returns the changes for the store to write.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

ANONYMOUS_ID = "anonymous_id"
USER_ID = "user_id"
EMAIL = "email"
KINDS = (ANONYMOUS_ID, USER_ID, EMAIL)

Key = tuple[str, str]


@dataclass(frozen=True)
class Observation:
    """The identifiers one event carries."""

    anonymous_id: str | None = None
    user_id: str | None = None
    email: str | None = None
    #: For ``alias`` calls: the previous id that is merged into ``user_id``.
    previous_id: str | None = None

    def primary(self) -> Key:
        """The identifier the event resolves through: user id, else anonymous id, else email."""
        if self.user_id is not None:
            return (USER_ID, self.user_id)
        if self.anonymous_id is not None:
            return (ANONYMOUS_ID, self.anonymous_id)
        assert self.email is not None, "an observation carries at least one identifier"
        return (EMAIL, self.email)

    def identifiers(self) -> list[Key]:
        keys = []
        if self.anonymous_id is not None:
            keys.append((ANONYMOUS_ID, self.anonymous_id))
        if self.user_id is not None:
            keys.append((USER_ID, self.user_id))
        if self.email is not None:
            keys.append((EMAIL, self.email))
        if self.previous_id is not None:
            keys.append((USER_ID, self.previous_id))
            keys.append((ANONYMOUS_ID, self.previous_id))
        return keys


@dataclass
class GraphSlice:
    """The part of the stored graph a batch touches.

    ``identities`` maps each known identifier to ``(identity_id, contact_id)``;
    ``user_ids`` maps each of those contacts to the user ids it holds.
    """

    identities: dict[Key, tuple[int, int]] = field(default_factory=dict)
    user_ids: dict[int, set[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Conflict:
    """A link the rules refused, kept so the team can see why two profiles stayed apart."""

    identifier: Key
    contact_id: int
    other_contact_id: int
    reason: str


@dataclass
class IdentityPlan:
    """What the store must write. Negative ids are provisional (new) ids in creation order."""

    new_contacts: list[int]
    #: (provisional identity id, kind, value, contact id — provisional or existing)
    new_identities: list[tuple[int, str, str, int]]
    #: existing contact id → the existing or provisional contact it merged into
    merges: dict[int, int]
    #: for each observation: the identity id its event resolves through
    event_identity: list[int]
    #: for each observation: the contact it belongs to after the whole batch
    event_contact: list[int]
    conflicts: list[Conflict]


def _age(contact_id: int) -> tuple[bool, int]:
    # Existing contacts (positive ids) are older than new ones; among new ones, creation order.
    return (contact_id < 0, abs(contact_id))


class IdentityPlanner:
    """Applies the identity rules to observations, in order, over a :class:`GraphSlice`."""

    def __init__(self, graph: GraphSlice):
        self._identities = dict(graph.identities)
        self._users: dict[int, set[str]] = {c: set(u) for c, u in graph.user_ids.items()}
        self._parent: dict[int, int] = {}
        self._new_contacts: list[int] = []
        self._new_identities: list[tuple[int, str, str, int]] = []
        self._merged: list[int] = []
        self._conflicts: list[Conflict] = []
        self._event_identity: list[int] = []
        self._event_contact: list[int] = []

    # -- union-find over contacts -------------------------------------------------------------
    def _root(self, contact: int) -> int:
        parent = self._parent
        root = contact
        while root in parent:
            root = parent[root]
        while contact != root:  # path compression
            parent[contact], contact = root, parent[contact]
        return root

    def _new_contact(self) -> int:
        contact = -(len(self._new_contacts) + 1)
        self._new_contacts.append(contact)
        self._users[contact] = set()
        return contact

    def _attach(self, key: Key, contact: int) -> int:
        identity = -(len(self._new_identities) + 1)
        self._new_identities.append((identity, key[0], key[1], contact))
        self._identities[key] = (identity, contact)
        if key[0] == USER_ID:
            self._users.setdefault(contact, set()).add(key[1])
        return identity

    def _contact_of(self, key: Key) -> int | None:
        found = self._identities.get(key)
        return self._root(found[1]) if found else None

    def _link(self, key: Key, contact: int, anchor: int, *, force: bool = False) -> int:
        """Merges ``contact`` and ``anchor`` unless that would join two different user ids."""
        a, b = self._root(contact), self._root(anchor)
        if a == b:
            return a
        users_a, users_b = self._users.get(a, set()), self._users.get(b, set())
        if not force and users_a and users_b and users_a != users_b:
            self._conflicts.append(
                Conflict(key, a, b, f"{key[0]} {key[1]!r} belongs to a contact with another user id")
            )
            return b
        survivor, loser = (a, b) if _age(a) < _age(b) else (b, a)
        self._parent[loser] = survivor
        self._users[survivor] = users_a | users_b
        self._users.pop(loser, None)
        self._merged.append(loser)
        return survivor

    # -- the rules ----------------------------------------------------------------------------
    def observe(self, obs: Observation) -> None:
        a = (ANONYMOUS_ID, obs.anonymous_id) if obs.anonymous_id is not None else None
        u = (USER_ID, obs.user_id) if obs.user_id is not None else None
        e = (EMAIL, obs.email) if obs.email is not None else None
        ca = self._contact_of(a) if a else None
        ce = self._contact_of(e) if e else None

        if u is not None:
            cu = self._contact_of(u)
            if cu is not None:
                anchor = cu
            else:
                # A new user id joins the person it was seen with, if that person has no other user id.
                free = [c for c in (ce, ca) if c is not None and not self._users.get(c)]
                anchor = free[0] if free else self._new_contact()
                self._attach(u, anchor)
        elif e is not None:
            anchor = ce if ce is not None else (ca if ca is not None else self._new_contact())
        else:
            assert a is not None, "an observation carries at least one identifier"
            anchor = ca if ca is not None else self._new_contact()

        for key, contact in ((e, ce), (a, ca)):
            if key is None:
                continue
            if contact is None:
                if key not in self._identities:
                    self._attach(key, self._root(anchor))
            else:
                anchor = self._link(key, contact, anchor)

        if obs.previous_id is not None and u is not None:
            # alias: an explicit merge, allowed even across user ids.
            prev_user = (USER_ID, obs.previous_id)
            prev_anon = (ANONYMOUS_ID, obs.previous_id)
            target = self._contact_of(prev_user)
            prev_key = prev_user
            if target is None:
                target, prev_key = self._contact_of(prev_anon), prev_anon
            if target is None:
                self._attach(prev_anon, self._root(anchor))
            else:
                anchor = self._link(prev_key, target, anchor, force=True)

        self._event_identity.append(self._identities[obs.primary()][0])
        self._event_contact.append(self._root(anchor))

    def plan(self) -> IdentityPlan:
        root = self._root
        return IdentityPlan(
            new_contacts=[c for c in self._new_contacts if root(c) == c],
            new_identities=[(i, k, v, root(c)) for i, k, v, c in self._new_identities],
            merges={c: root(c) for c in self._merged if c > 0},
            event_identity=self._event_identity,
            event_contact=[root(c) for c in self._event_contact],
            conflicts=[
                Conflict(c.identifier, root(c.contact_id), root(c.other_contact_id), c.reason)
                for c in self._conflicts
            ],
        )


def plan_batch(graph: GraphSlice, observations: Iterable[Observation]) -> IdentityPlan:
    """Runs the rules over ``observations`` in order. Example::

    plan = plan_batch(GraphSlice(), [Observation(anonymous_id="a1"), Observation("a1", "u1")])
    # one new contact holding a1 and u1; both events resolve to it
    """
    planner = IdentityPlanner(graph)
    for obs in observations:
        planner.observe(obs)
    return planner.plan()
