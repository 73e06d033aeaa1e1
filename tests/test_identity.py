"""Identity resolution: the rules (pure) and their invariants on both engines (hypothesis)."""

from __future__ import annotations

import multiprocessing
import threading
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from percorso.events import parse_message
from percorso.identity import GraphSlice, Observation, plan_batch
from percorso.store import Store

T0 = datetime(2026, 3, 1, tzinfo=UTC)

# -- the rules, pure ---------------------------------------------------------------------------


def partition(plan, observations):
    """identifier → group label, from a single-batch plan."""
    groups: dict[int, set] = {}
    for obs, contact in zip(observations, plan.event_contact, strict=True):
        groups.setdefault(contact, set()).update(k for k in obs.identifiers() if k[1] is not None)
    return groups


def test_anonymous_visitor_becomes_known_and_keeps_history():
    obs = [
        Observation(anonymous_id="a1"),
        Observation(anonymous_id="a1"),
        Observation(anonymous_id="a1", user_id="u1", email="g@x.it"),
    ]
    plan = plan_batch(GraphSlice(), obs)
    assert len(set(plan.event_contact)) == 1 and len(plan.new_contacts) == 1
    assert {(k, v) for _, k, v, _ in plan.new_identities} == {
        ("anonymous_id", "a1"),
        ("user_id", "u1"),
        ("email", "g@x.it"),
    }


def test_known_email_links_a_new_device():
    graph = GraphSlice(
        identities={("email", "g@x.it"): (1, 10), ("user_id", "u1"): (2, 10)}, user_ids={10: {"u1"}}
    )
    plan = plan_batch(graph, [Observation(anonymous_id="phone", email="g@x.it")])
    assert plan.event_contact == [10]
    assert plan.new_identities == [(-1, "anonymous_id", "phone", 10)]


def test_two_user_ids_never_merge_implicitly():
    graph = GraphSlice(
        identities={("anonymous_id", "shared-tablet"): (1, 10), ("user_id", "u1"): (2, 10)},
        user_ids={10: {"u1"}},
    )
    plan = plan_batch(graph, [Observation(anonymous_id="shared-tablet", user_id="u2")])
    assert plan.merges == {}
    assert plan.event_contact == [-1]  # u2 is a new person
    assert plan.conflicts and plan.conflicts[0].identifier == ("anonymous_id", "shared-tablet")
    # An email owned by u1's contact is not taken over by u2 either.
    graph.identities[("email", "a@x.it")] = (3, 10)
    plan = plan_batch(graph, [Observation(user_id="u2", email="a@x.it")])
    assert plan.merges == {} and plan.conflicts


def test_alias_merges_explicitly_even_across_user_ids():
    graph = GraphSlice(
        identities={("user_id", "old"): (1, 10), ("user_id", "new"): (2, 20)},
        user_ids={10: {"old"}, 20: {"new"}},
    )
    plan = plan_batch(graph, [Observation(user_id="new", previous_id="old")])
    assert plan.merges == {20: 10}  # the older contact survives
    assert plan.event_contact == [10]


def test_merging_two_existing_contacts_flattens_to_the_oldest():
    graph = GraphSlice(
        identities={("anonymous_id", "a"): (1, 30), ("email", "e@x.it"): (2, 20), ("user_id", "u"): (3, 10)},
        user_ids={10: {"u"}},
    )
    plan = plan_batch(
        graph, [Observation(anonymous_id="a", email="e@x.it"), Observation(user_id="u", email="e@x.it")]
    )
    assert plan.merges == {30: 10, 20: 10}


anon = st.sampled_from([f"a{i}" for i in range(6)])
users = st.sampled_from([f"u{i}" for i in range(3)])
emails = st.sampled_from([f"e{i}@x.it" for i in range(3)])
observations = st.lists(
    st.builds(
        Observation, anonymous_id=st.none() | anon, user_id=st.none() | users, email=st.none() | emails
    ).filter(lambda o: o.anonymous_id or o.user_id or o.email),
    min_size=1,
    max_size=25,
)
no_user_observations = st.lists(
    st.builds(Observation, anonymous_id=st.none() | anon, email=st.none() | emails).filter(
        lambda o: o.anonymous_id or o.email
    ),
    min_size=1,
    max_size=25,
)


def as_sets(groups: dict) -> frozenset:
    return frozenset(frozenset(g) for g in groups.values())


@given(no_user_observations, st.randoms())
def test_merge_order_does_not_change_the_result(obs, rnd):
    shuffled = list(obs)
    rnd.shuffle(shuffled)
    assert as_sets(partition(plan_batch(GraphSlice(), obs), obs)) == as_sets(
        partition(plan_batch(GraphSlice(), shuffled), shuffled)
    )


@given(observations)
def test_no_contact_ever_holds_two_user_ids_without_alias(obs):
    for group in partition(plan_batch(GraphSlice(), obs), obs).values():
        assert len({v for k, v in group if k == "user_id"}) <= 1


# -- the same invariants through the store, on both engines -------------------------------------


def to_events(obs_list, classifier):
    events = []
    for i, o in enumerate(obs_list):
        message = {
            "type": "identify" if o.email else "track",
            "event": "Step",
            "messageId": f"m{i}",
            "timestamp": (T0 + timedelta(minutes=i)).isoformat(),
        }
        if o.anonymous_id:
            message["anonymousId"] = o.anonymous_id
        if o.user_id:
            message["userId"] = o.user_id
        if o.email:
            message["traits"] = {"email": o.email}
        events.append(
            parse_message(
                msgspec.json.encode(message), received_at=T0 + timedelta(days=1), classifier=classifier
            )
        )
    return events


def stored_partition(store: Store) -> tuple[frozenset, dict[str, int]]:
    with store.session() as s:
        ids = s.rows("SELECT contact_id, kind, value FROM identities")
        per_event = s.rows(
            "SELECT e.message_id, i.contact_id FROM events e JOIN identities i ON i.identity_id = e.identity_id"
        )
    groups: dict[int, set] = {}
    for contact, kind, value in ids:
        groups.setdefault(contact, set()).add((kind, value))
    return as_sets(groups), dict(per_event)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(obs=observations, split=st.integers(min_value=1, max_value=5))
def test_store_never_loses_or_doubles_an_event_and_batching_does_not_matter(store, classifier, obs, split):
    store.reset()
    events = to_events(obs, classifier)
    store.ingest(events)
    one_batch, per_event = stored_partition(store)
    assert sorted(per_event) == sorted(e.message_id for e in events)  # every event once
    with store.session() as s:
        counted = s.rows("SELECT count(*) FROM events e JOIN identities i ON i.identity_id = e.identity_id")[
            0
        ][0]
    assert counted == len(events)

    store.reset()
    for start in range(0, len(obs), split):
        store.ingest(to_events(obs, classifier)[start : start + split])
    assert stored_partition(store)[0] == one_batch
    # Retrying everything stores nothing twice.
    assert store.ingest(to_events(obs, classifier)) == set()
    assert store.counts()["events"] == len(obs)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(obs=no_user_observations, rnd=st.randoms())
def test_store_merge_order_does_not_change_the_result(store, classifier, obs, rnd):
    store.reset()
    for event in to_events(obs, classifier):
        store.ingest([event])
    forward = stored_partition(store)[0]
    store.reset()
    shuffled = list(obs)
    rnd.shuffle(shuffled)
    for event in to_events(shuffled, classifier):
        store.ingest([event])
    assert stored_partition(store)[0] == forward


def test_merged_history_counts_once(store, classifier):
    early = [
        {
            "type": "page",
            "anonymousId": "anon-1",
            "messageId": f"p{i}",
            "timestamp": (T0 + timedelta(hours=i)).isoformat(),
        }
        for i in range(3)
    ]
    later = [
        {
            "type": "identify",
            "anonymousId": "anon-1",
            "userId": "u-9",
            "messageId": "id1",
            "traits": {"email": "marco@example.it"},
            "timestamp": (T0 + timedelta(hours=5)).isoformat(),
        },
        {
            "type": "track",
            "userId": "u-9",
            "event": "Order Completed",
            "messageId": "o1",
            "timestamp": (T0 + timedelta(hours=6)).isoformat(),
        },
    ]
    for batch in (early, later):
        store.ingest(
            [
                parse_message(
                    msgspec.json.encode(m), received_at=T0 + timedelta(days=1), classifier=classifier
                )
                for m in batch
            ]
        )
    with store.session() as s:
        rows = s.rows(
            "SELECT i.contact_id, count(*) FROM events e JOIN identities i "
            "ON i.identity_id = e.identity_id GROUP BY i.contact_id"
        )
    assert len(rows) == 1 and rows[0][1] == 5
    assert store.counts()["contacts"] == 1


def _ingest_same_visitors(url: str, worker: int, barrier) -> None:
    from percorso.channels import ChannelClassifier, load_rules
    from percorso.store.postgres import PostgresStore

    store = PostgresStore(url, pool_size=2)
    clf = ChannelClassifier(load_rules())
    events = [
        parse_message(
            msgspec.json.encode(
                {"type": "page", "anonymousId": f"visitor-{v}", "messageId": f"w{worker}-v{v}"}
            ),
            received_at=datetime.now(UTC),
            classifier=clf,
        )
        for v in range(50)
    ]
    barrier.wait()
    for event in events:
        store.ingest([event])
    store.close()


def test_concurrent_first_events_from_several_processes_make_one_contact(pg_url):
    from percorso.store.postgres import PostgresStore

    store = PostgresStore(pg_url, pool_size=2)
    store.migrate()
    store.reset()
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_ingest_same_visitors, args=(pg_url, w, barrier)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    counts = store.counts()
    store.close()
    assert counts == {"events": 200, "contacts": 50, "identities": 50}


def test_concurrent_first_events_over_http_make_one_contact(server):
    import httpx

    def send(i: int) -> None:
        with httpx.Client(base_url=server.url, auth=(server.write_key, "")) as c:
            assert (
                c.post("/v1/page", json={"anonymousId": "same-new-visitor", "messageId": f"c{i}"}).status_code
                == 200
            )

    threads = [threading.Thread(target=send, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert server.store.counts() == {"events": 20, "contacts": 1, "identities": 1}


@pytest.mark.parametrize("email_first", [True, False])
def test_conflicts_are_recorded(store, classifier, email_first):
    msgs = [
        {"type": "identify", "userId": "u1", "anonymousId": "tablet", "messageId": "1"},
        {"type": "identify", "userId": "u2", "anonymousId": "tablet", "messageId": "2"},
    ]
    if not email_first:
        msgs.reverse()
    for m in msgs:
        store.ingest([parse_message(msgspec.json.encode(m), received_at=T0, classifier=classifier)])
    with store.session() as s:
        conflicts = s.rows("SELECT kind, value FROM identity_conflicts")
    assert conflicts == [("anonymous_id", "tablet")]
    assert store.counts()["contacts"] == 2


@pytest.mark.parametrize("later", ["older_contact", "newer_contact"])
def test_on_a_merge_the_profile_updated_last_wins_key_by_key(store, classifier, later):
    """docs/identity.md: on a merge, the profile updated most recently wins key by key: its
    values replace the other's where both have the key; keys only one of them has are kept."""
    import json as _json

    from percorso.store.contacts import find_contact, resolve_contact

    early, late = T0 + timedelta(hours=1), T0 + timedelta(hours=2)
    old_at, new_at = (late, early) if later == "older_contact" else (early, late)
    first = [  # two people, two stored contacts (the first one is older: it survives the merge)
        {
            "type": "identify",
            "userId": "marta",
            "traits": {"plan": "free", "city": "Milano"},
            "timestamp": old_at,
        },
        {
            "type": "identify",
            "anonymousId": "tablet",
            "traits": {"plan": "gold", "phone": "+39 02 1234"},
            "timestamp": new_at,
        },
    ]
    merge = [
        {"type": "alias", "previousId": "tablet", "userId": "marta", "timestamp": T0 + timedelta(hours=3)}
    ]
    for n, batch in enumerate((first, merge)):
        store.ingest(
            [
                parse_message(
                    _json.dumps(
                        {**m, "messageId": f"k{n}-{i}", "timestamp": m["timestamp"].isoformat()}
                    ).encode(),
                    received_at=T0 + timedelta(days=1),
                    classifier=classifier,
                )
                for i, m in enumerate(batch)
            ]
        )
    tablet, marta = find_contact(store, "anonymous_id", "tablet"), find_contact(store, "user_id", "marta")
    with store.session() as s:
        live, row = resolve_contact(s, tablet)
    assert live == marta
    traits = row["traits"] if isinstance(row["traits"], dict) else _json.loads(row["traits"])
    winner = "free" if later == "older_contact" else "gold"
    assert traits == {"plan": winner, "city": "Milano", "phone": "+39 02 1234"}, traits
