"""The group commit on both stores: requests queued together share one transaction, and an event
the database refuses sinks neither the other requests of its group nor the rest of its own
request. No input the collector accepts reaches the database in a shape it refuses any more
(docs/collector.md, "What a stored value may be"), so the refused event is made here: a parsed
event whose properties are then replaced with text that is not JSON."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import msgspec

from percorso.collect.writer import GroupCommitWriter, WriteOutcome
from percorso.events import Event, parse_message
from percorso.store import Store


def event(classifier: Any, message_id: str, user: str) -> Event:
    message = {"type": "track", "event": "Ordered", "userId": user, "messageId": message_id}
    return parse_message(msgspec.json.encode(message), received_at=datetime.now(UTC), classifier=classifier)


def test_a_refused_event_sinks_nothing_else_in_its_group(store: Store, classifier: Any) -> None:
    first = [event(classifier, f"a{n}", "anna") for n in range(3)]
    bad = event(classifier, "b1", "bruno")
    poisoned = msgspec.structs.replace(bad, properties='{"total": ')  # not JSON: every store refuses it
    second = [event(classifier, "b0", "bruno"), poisoned, event(classifier, "b2", "bruno")]
    third = [event(classifier, f"c{n}", "carla") for n in range(2)]

    async def scenario() -> tuple[list[WriteOutcome], int]:
        writer = GroupCommitWriter(store)
        tasks = [asyncio.create_task(writer.write(events)) for events in (first, second, third)]
        await asyncio.sleep(0)  # all three queued before the writer runs: one group
        writer.start()
        try:
            return list(await asyncio.gather(*tasks)), writer.commits
        finally:
            writer.stop()

    (a, b, c), commits = asyncio.run(scenario())
    assert a.stored == {"a0", "a1", "a2"} and a.refused == {}
    assert c.stored == {"c0", "c1"} and c.refused == {}
    assert b.stored == {"b0", "b2"} and list(b.refused) == ["b1"] and b.refused["b1"]
    assert commits >= 2  # the group failed as one, then its requests went alone
    with store.session() as s:
        stored = sorted(r[0] for r in s.rows("SELECT message_id FROM events"))
    assert stored == ["a0", "a1", "a2", "b0", "b2", "c0", "c1"]
