"""``record_inbound_batch`` on PostgreSQL with the ingest's bulk loader and binary inserter."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from eventsourcing.persistence import IntegrityError, StoredEvent

from api.bootstrap import build_program
from api.settings import Settings
from consumers.ingest import postgres_event_inserter, postgres_event_loader
from domain.application import InboundAggregates, PartnerProgram
from tests.unit.test_inbound_batch import COMMANDS, one_by_one, stored, summary, world

pytestmark = pytest.mark.integration


@pytest.fixture
def program(pg_url: str, pg_schema: str) -> Iterator[PartnerProgram]:
    app = build_program(Settings(store="postgres", database_url=pg_url, database_schema=pg_schema))
    yield app
    app.close()


@pytest.mark.parametrize("size", [1, 4, len(COMMANDS)])
def test_batches_record_what_the_commands_record_one_by_one(program: PartnerProgram, size: int) -> None:
    expected_world = world()  # in memory, one command at a time
    expected = one_by_one(expected_world.app, COMMANDS)
    world(program)
    load, insert = postgres_event_loader(program), postgres_event_inserter(program)
    assert load is not None and insert is not None
    kept = InboundAggregates()
    outcomes = []
    for start in range(0, len(COMMANDS), size):
        outcomes += program.record_inbound_batch(
            COMMANDS[start : start + size], load_events=load, aggregates=kept, insert_events=insert
        )
    assert [summary(o) for o in outcomes] == [summary(o) for o in expected]
    assert stored(program) == stored(expected_world.app)
    assert len(kept) > 0


def test_the_inserter_and_the_loader(program: PartnerProgram) -> None:
    insert, load = postgres_event_inserter(program), postgres_event_loader(program)
    assert insert is not None and load is not None
    a, b = uuid.uuid4(), uuid.uuid4()
    first = insert([StoredEvent(a, 1, "t", b"a1"), StoredEvent(b, 1, "t", b"b1")])
    assert list(first) == sorted(first) and len(first) == 2
    with pytest.raises(IntegrityError):  # a RecordConflictError: version 1 of a is taken
        insert([StoredEvent(b, 2, "t", b"b2"), StoredEvent(a, 1, "t", b"a1 again")])
    assert program.recorder.max_notification_id() == first[-1], "nothing of the failed insert is stored"
    (position,) = insert([StoredEvent(b, 2, "t", b"b2")])  # the pooled connection is still usable
    assert position > first[-1]
    loaded = load({a: 0, b: 1, uuid.uuid4(): 0})
    assert {k: [(e.originator_version, e.state) for e in v] for k, v in loaded.items()} == {
        a: [(1, b"a1")],
        b: [(2, b"b2")],
    }
    assert [n.id for n in program.notification_log.select(start=1, limit=10)] == [*first, position]
