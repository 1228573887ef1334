"""The auditor's replay against the real PostgreSQL and Kafka.

The sample programme is recorded once on a PostgreSQL event store (its own
schema, like ``pg_schema`` but for the module: recording takes ~12 s); each
test publishes it with the real relay (``consumers.relay``) to topics under a
prefix of its own, replays it from Kafka offset 0 and from the event store into
PostgreSQL schemas ``replay_<name>``, and compares with the live ledger computed
in process from the store.

Replay rates are logged (warning level, shown with ``-rA``) and recorded as test properties.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from kafka import KafkaConsumer, TopicPartition
from psycopg import sql

from api.bootstrap import build_program
from api.sample import generate, run_commands
from api.settings import Settings
from consumers.history import read_history
from consumers.relay import Relay, relay_producer, route
from consumers.topics import TopicNames
from domain.application import PartnerProgram
from projections.audit import diff, explain_line
from projections.envelope import EventEnvelope
from projections.ledger import CommissionLedger
from projections.memory import InMemoryProjectionStore
from projections.port import Doc, DocKey
from projections.postgres import PostgresProjectionStore
from projections.replay import (
    ReplayTarget,
    coordinates_of,
    kafka_offsets,
    open_target,
    replay,
    resume_point,
    schema_for,
)
from projections.runner import run_projections
from projections.store_reader import read_store
from tests.helpers import event_topics

pytestmark = pytest.mark.integration


@dataclass
class Recorded:
    program: PartnerProgram
    schema: str
    events: list[EventEnvelope]
    live: dict[DocKey, Doc]


@pytest.fixture(scope="module")
def recorded(pg_url: str) -> Iterator[Recorded]:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    program = build_program(Settings(store="postgres", database_url=pg_url, database_schema=schema))
    try:
        run_commands(program, generate())
        events = list(read_store(program))
        live = InMemoryProjectionStore()
        run_projections(live, [CommissionLedger()], events)
        yield Recorded(program, schema, events, live.dump("ledger"))
    finally:
        program.close()
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture
def topics(kafka_bootstrap: str) -> Iterator[TopicNames]:
    with event_topics(kafka_bootstrap, "replay") as names:
        yield names


@pytest.fixture
def targets(pg_url: str, recorded: Recorded) -> Iterator[Callable[[str], ReplayTarget]]:
    """Replay targets ``replay_<name>`` in PostgreSQL, dropped afterwards."""
    opened: list[tuple[ReplayTarget, str]] = []

    def make(label: str) -> ReplayTarget:
        name = f"it_{label}_{uuid.uuid4().hex[:8]}"
        target = open_target(name, database_url=pg_url, live_schemas=[recorded.schema])
        opened.append((target, schema_for(name)))
        return target

    yield make
    for target, schema in opened:
        target.close()
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def connect_to(pg_url: str) -> Callable[[], psycopg.Connection[Any]]:
    return lambda: psycopg.connect(pg_url, connect_timeout=5)


def relay_all(recorded: Recorded, topics: TopicNames, kafka_bootstrap: str, pg_url: str) -> None:
    relay = Relay(
        recorded.program,
        lambda: relay_producer(kafka_bootstrap),
        connect_to(pg_url),
        topics,
        batch_size=500,
        relay_name=f"audit-{uuid.uuid4().hex[:8]}",
        schema=recorded.schema,
    )
    try:
        while relay.run_once():
            pass
        assert relay.lag() == 0
    finally:
        relay.close()


def records_on(topics: TopicNames, kafka_bootstrap: str) -> int:
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=None, enable_auto_commit=False)
    try:
        tps = [
            TopicPartition(topic, p)
            for topic in (topics.events, topics.program)
            for p in consumer.partitions_for_topic(topic)
        ]
        return sum(consumer.end_offsets(tps).values())
    finally:
        consumer.close()


def timed_replay(events: Any, target: ReplayTarget, **kwargs: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    stats = replay(events, target.store, **kwargs)
    return stats, time.perf_counter() - started


def test_replays_from_kafka_and_from_the_store_are_identical_to_the_live_ledger(
    recorded: Recorded,
    topics: TopicNames,
    targets: Callable[[str], ReplayTarget],
    kafka_bootstrap: str,
    pg_url: str,
    record_property: Callable[[str, object], None],
) -> None:
    relay_all(recorded, topics, kafka_bootstrap, pg_url)
    assert records_on(topics, kafka_bootstrap) == len(recorded.events)

    from_kafka = targets("kafka")
    history = read_history(kafka_bootstrap, prefix=topics.prefix)
    assert history.total_records == len(recorded.events)
    kafka_stats, kafka_s = timed_replay(history, from_kafka, source="kafka")
    assert kafka_stats.seen == kafka_stats.applied == len(recorded.events)
    assert history.stats.duplicates == 0

    from_store = targets("store")
    store_stats, store_s = timed_replay(read_store(recorded.program), from_store, source="store")
    assert store_stats.applied == len(recorded.events)

    for target in (from_kafka, from_store):
        report = diff(recorded.live, target.dump())
        assert report.identical, report.summary()
        # what is in PostgreSQL, read back without the replay's cache, is the same
        fresh = PostgresProjectionStore(pg_url, target.store.store.schema)  # type: ignore[attr-defined]
        try:
            assert diff(recorded.live, fresh.dump("ledger")).identical
        finally:
            fresh.close()

    # explanations name where each event was read on Kafka
    line_id = next(
        key for (kind, key), doc in sorted(recorded.live.items()) if kind == "line" and doc["kind"] == "clawback"
    )
    events = explain_line(recorded.live, line_id)["events"]
    coordinates = coordinates_of(from_kafka.store, [e["sequence"] for e in events])
    explained = explain_line(recorded.live, line_id, coordinates=coordinates)
    by_sequence = {e.sequence: e for e in recorded.events}
    for event in explained["events"]:
        where = event["kafka"]
        assert where is not None, event
        envelope = by_sequence[event["sequence"]]
        assert where == {
            "topic": route(envelope, topics).topic,
            "partition": where["partition"],
            "offset": where["offset"],
        }
    assert coordinates_of(from_store.store, [e["sequence"] for e in events]) == {}

    kafka_rate = len(recorded.events) / kafka_s
    store_rate = len(recorded.events) / store_s
    record_property("replay_kafka_events_per_s", round(kafka_rate))
    record_property("replay_store_events_per_s", round(store_rate))
    logging.getLogger(__name__).warning(
        "replay of %d events into PostgreSQL: from Kafka %.2f s (%.0f events/s), from the store %.2f s (%.0f events/s)",
        len(recorded.events),
        kafka_s,
        kafka_rate,
        store_s,
        store_rate,
    )


def test_a_history_with_republished_duplicates_gives_the_same_replay(
    recorded: Recorded,
    topics: TopicNames,
    targets: Callable[[str], ReplayTarget],
    kafka_bootstrap: str,
    pg_url: str,
) -> None:
    # A relay that crashes after the broker acked its third batch but before recording it…
    name = f"audit-{uuid.uuid4().hex[:8]}"
    crashing = Relay(
        recorded.program,
        lambda: relay_producer(kafka_bootstrap),
        connect_to(pg_url),
        topics,
        batch_size=400,
        relay_name=name,
        schema=recorded.schema,
    )
    original_save = crashing.tracker.save
    saves: list[int] = []

    def save_then_crash(position: int) -> None:
        if len(saves) == 2:
            raise RuntimeError("simulated crash after the broker's ack")
        saves.append(position)
        original_save(position)

    crashing.tracker.save = save_then_crash  # type: ignore[method-assign]
    assert crashing.run_once() == 400 and crashing.run_once() == 400
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashing.run_once()
    crashing.close()
    # … is restarted and publishes batch three again, with the same CloudEvents ids.
    relay_all_from = Relay(
        recorded.program,
        lambda: relay_producer(kafka_bootstrap),
        connect_to(pg_url),
        topics,
        batch_size=400,
        relay_name=name,
        schema=recorded.schema,
    )
    try:
        assert relay_all_from.published_position == 800
        while relay_all_from.run_once():
            pass
    finally:
        relay_all_from.close()
    # and a second copy of a late stretch, as another at-least-once retry would send it
    producer = relay_producer(kafka_bootstrap)
    try:
        for envelope in recorded.events[2000:2100]:
            where = route(envelope, topics)
            producer.send(where.topic, key=where.key.encode(), value=envelope.to_json())
        producer.flush(timeout=30)
    finally:
        producer.close()
    duplicates = records_on(topics, kafka_bootstrap) - len(recorded.events)
    assert duplicates == 400 + 100

    target = targets("dups")
    history = read_history(kafka_bootstrap, prefix=topics.prefix)
    stats = replay(history, target.store, batch_size=700, source="kafka")
    assert history.stats.duplicates == duplicates
    assert stats.seen == stats.applied == len(recorded.events)
    report = diff(recorded.live, target.dump())
    assert report.identical, report.summary()


def test_a_kafka_replay_interrupted_in_postgres_resumes_from_its_offsets(
    recorded: Recorded,
    topics: TopicNames,
    targets: Callable[[str], ReplayTarget],
    kafka_bootstrap: str,
    pg_url: str,
) -> None:
    relay_all(recorded, topics, kafka_bootstrap, pg_url)
    target = targets("resume")

    class Interrupted(Exception):
        pass

    def interrupt(seen: int, last: int) -> None:
        if seen >= 1000:
            raise Interrupted

    with pytest.raises(Interrupted):
        replay(read_history(kafka_bootstrap, prefix=topics.prefix), target.store, batch_size=500, progress=interrupt)
    done = resume_point(target.store)
    offsets = kafka_offsets(target.store)
    assert done == recorded.events[999].sequence
    assert sum(offsets.values()) == 1000  # no duplicates on these topics: one record per event

    history = read_history(kafka_bootstrap, prefix=topics.prefix, start_offsets=offsets, after_sequence=done)
    assert history.total_records == len(recorded.events) - 1000
    stats = replay(history, target.store, batch_size=500)
    assert stats.resumed_from == done and stats.applied == len(recorded.events) - 1000
    report = diff(recorded.live, target.dump())
    assert report.identical, report.summary()
