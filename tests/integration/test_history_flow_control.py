"""Reading a long, skewed Kafka history yields every event once, in sequence order, without stalling."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from kafka import KafkaProducer

from consumers.history import read_history
from consumers.topics import TopicNames
from projections.envelope import EventEnvelope
from tests.helpers import event_topics

pytestmark = pytest.mark.integration

PARTNERS = [f"P-{n:04d}" for n in range(12)]


@pytest.fixture
def topics(kafka_bootstrap: str) -> Iterator[TopicNames]:
    with event_topics(kafka_bootstrap, "history") as names:
        yield names


def envelope(sequence: int) -> EventEnvelope:
    partner = PARTNERS[(sequence * 7) % len(PARTNERS)]
    return EventEnvelope(
        id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"history-test/{sequence}")),
        type="prm.sale.recorded.v1",
        subject=f"S-{sequence}",
        sequence=sequence,
        aggregate_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"sale/{sequence}")),
        aggregate_version=1,
        partner_id=partner,
        time=datetime(2026, 1, 1, tzinfo=UTC),
        data={"sale_id": f"S-{sequence}", "total_minor": sequence},
    )


def test_a_long_history_is_merged_in_sequence_order_without_stalling(topics: TopicNames, kafka_bootstrap: str) -> None:
    total = 6_000
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=20, batch_size=256 * 1024)
    for sequence in range(1, total + 1):
        event = envelope(sequence)
        # every 500th event is a programme event on the other topic, as the relay routes plan versions
        if sequence % 500 == 0:
            producer.send(topics.program, key=b"STD", value=event.to_json())
        else:
            producer.send(topics.events, key=(event.partner_id or "direct").encode(), value=event.to_json())
    producer.flush()
    producer.close()

    # Small polls make the merge wait on one partition while the others run ahead many times over
    # (pausing those, as an earlier version did, stalled kafka-python 3.0.12 for good).
    history = read_history(kafka_bootstrap, prefix=topics.prefix, max_poll_records=200)
    sequences = [event.sequence for event in history]
    assert sequences == list(range(1, total + 1))
    assert history.stats.duplicates == 0
