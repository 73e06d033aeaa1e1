"""Identity resolution against an independent reference: a union-find written here.

The rule "every identifier seen together on one event belongs to one contact" makes the contacts
exactly the connected components of the identifiers that co-occur, as long as no component holds
two user ids (only then does the conflict rule refuse a link). So, for random observations
(hypothesis), in the pure planner and through the store on both engines:

- every contact lies inside one component (nothing merged that never met);
- every component with at most one user id is exactly one contact (nothing left unmerged);
- every event belongs to the contact of the identifier it resolves through;
- no contact holds two user ids.

A planner that never merges, or merges everything, fails the first two.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from percorso.identity import GraphSlice, Observation, plan_batch
from percorso.store import Store
from tests.test_identity import observations, stored_partition, to_events

Key = tuple[str, str]


class UnionFind:
    def __init__(self) -> None:
        self.parent: dict[Key, Key] = {}

    def find(self, key: Key) -> Key:
        self.parent.setdefault(key, key)
        while self.parent[key] != key:
            self.parent[key] = self.parent[self.parent[key]]
            key = self.parent[key]
        return key

    def union(self, a: Key, b: Key) -> None:
        self.parent[self.find(a)] = self.find(b)

    def components(self) -> list[frozenset[Key]]:
        groups: dict[Key, set[Key]] = {}
        for key in list(self.parent):
            groups.setdefault(self.find(key), set()).add(key)
        return [frozenset(g) for g in groups.values()]


def reference(obs: list[Observation]) -> list[frozenset[Key]]:
    uf = UnionFind()
    for o in obs:
        keys = o.identifiers()
        for key in keys:
            uf.find(key)
        for key in keys[1:]:
            uf.union(keys[0], key)
    return uf.components()


def check(
    obs: list[Observation],
    contacts: list[frozenset[Key]],
    event_contact: dict[int, int],
    owner: dict[Key, int],
) -> None:
    components = reference(obs)
    where = {key: c for c in components for key in c}
    for contact in contacts:
        assert len({where[key] for key in contact}) == 1, (
            f"{sorted(contact)} joins identifiers that never met"
        )
        assert len({v for k, v in contact if k == "user_id"}) <= 1, f"{sorted(contact)} holds two user ids"
    as_set = set(contacts)
    for component in components:
        if len({v for k, v in component if k == "user_id"}) <= 1:
            assert component in as_set, f"{sorted(component)} met on events but is split"
    for i, o in enumerate(obs):
        assert event_contact[i] == owner[o.primary()], f"event {i} is not with {o.primary()}"


@given(observations)
def test_the_planner_matches_the_reference(obs: list[Observation]) -> None:
    plan = plan_batch(GraphSlice(), obs)
    groups: dict[int, set[Key]] = {}
    owner: dict[Key, int] = {}
    for o, contact in zip(obs, plan.event_contact, strict=True):
        for key in o.identifiers():
            groups.setdefault(contact, set()).add(key)
    # An identifier can ride on an event that the conflict rule keeps away from it; the
    # identifier itself belongs where the plan put the events that resolve through it.
    for o, contact in zip(obs, plan.event_contact, strict=True):
        owner.setdefault(o.primary(), contact)
    if any(len({v for k, v in c if k == "user_id"}) > 1 for c in reference(obs)):
        return  # the conflict rule decides; the store test below checks the stored graph
    check(obs, [frozenset(g) for g in groups.values()], dict(enumerate(plan.event_contact)), owner)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(obs=observations, split=st.integers(min_value=1, max_value=6))
def test_the_store_matches_the_reference(
    store: Store, classifier, obs: list[Observation], split: int
) -> None:
    store.reset()
    events = to_events(obs, classifier)
    for start in range(0, len(events), split):
        store.ingest(events[start : start + split])
    stored, per_event = stored_partition(store)
    with store.session() as s:
        owner = {
            (kind, value): int(c)
            for c, kind, value in s.rows("SELECT contact_id, kind, value FROM identities")
        }
    check(obs, list(stored), {int(m[1:]): int(c) for m, c in per_event.items()}, owner)


def test_concurrent_merges_from_several_connections_match_the_reference(store: Store, classifier) -> None:
    """Merges of stored contacts sent at once from four threads (four connections on PostgreSQL)
    end in exactly the components a union-find of all the observations gives."""
    import random
    import threading

    rng = random.Random(7)
    # 40 visitors already stored, each its own contact ...
    visitors = [Observation(anonymous_id=f"v{i}") for i in range(40)]
    store.ingest(to_events(visitors, classifier))
    # ... then emails link them in overlapping chains, sent by four clients at once.
    links = [
        Observation(anonymous_id=f"v{rng.randrange(40)}", email=f"e{rng.randrange(15)}@x.it")
        for _ in range(120)
    ]
    chunks = [links[i::4] for i in range(4)]
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def client(n: int) -> None:
        events = to_events(chunks[n], classifier)
        for i, event in enumerate(events):
            event.message_id = f"link-{n}-{i}"
        barrier.wait()
        try:
            for start in range(0, len(events), 3):
                store.ingest(events[start : start + 3])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    stored, _ = stored_partition(store)
    expected = {c for c in reference(visitors + links)}
    assert set(stored) == expected
