"""Smoke test of the development Kafka broker started by ``deploy/up``.

Needs a running broker (``deploy/up kafka``) and ``kafka-python[crc32c]==3.0.12``.
Reads the bootstrap address from ``PRM_KAFKA_BOOTSTRAP`` (default 127.0.0.1:19092).
"""

from __future__ import annotations

import os
import time
import uuid
from collections import defaultdict

import pytest

kafka = pytest.importorskip("kafka", reason="needs kafka-python[crc32c]==3.0.12")
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer  # noqa: E402
from kafka.serializer import DefaultSerializer, JsonSerializer  # noqa: E402

pytestmark = pytest.mark.integration

BOOTSTRAP = os.environ.get("PRM_KAFKA_BOOTSTRAP", "127.0.0.1:19092")
PARTITIONS = 3
KEYS = [f"partner-{i}" for i in range(7)]
MESSAGES = 100
TIMEOUT_S = 60


@pytest.fixture
def topic():
    name = f"it-broker-smoke-{uuid.uuid4().hex[:12]}"
    admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP, client_id="prm-it-admin")
    try:
        admin.create_topics(
            {name: {"num_partitions": PARTITIONS, "replication_factor": 1}},
            timeout_ms=30_000,
            wait_for_metadata=True,
        )
        yield name
    finally:
        try:
            admin.delete_topics([name], timeout_ms=30_000)
        finally:
            admin.close()


def test_produce_consume_keeps_every_message_once_and_per_key_order(topic):
    # --- produce: 100 keyed messages, each with a per-key sequence number.
    producer = KafkaProducer(
        bootstrap_servers=BOOTSTRAP,
        client_id="prm-it-producer",
        acks="all",
        key_serializer=DefaultSerializer(),
        value_serializer=JsonSerializer(),
    )
    sent = []  # (message id, key, seq)
    futures = []
    next_seq = defaultdict(int)
    try:
        for i in range(MESSAGES):
            key = KEYS[i % len(KEYS)]
            seq = next_seq[key]
            next_seq[key] += 1
            msg_id = f"m-{i}"
            sent.append((msg_id, key, seq))
            futures.append(producer.send(topic, key=key, value={"id": msg_id, "key": key, "seq": seq}))
        producer.flush(timeout=TIMEOUT_S)
        metadata = [f.get(timeout=TIMEOUT_S) for f in futures]  # raises unless acked
    finally:
        producer.close(timeout=10)

    # Highest acked offset per partition: we are done consuming once we pass it.
    end_offsets = {}
    for md in metadata:
        assert md.topic == topic and md.offset >= 0
        end_offsets[md.partition] = max(end_offsets.get(md.partition, -1), md.offset + 1)
    assert set(end_offsets) <= set(range(PARTITIONS))
    assert len(end_offsets) > 1, "7 keys should spread over more than one of 3 partitions"

    # --- consume them back with a fresh group from the beginning.
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=BOOTSTRAP,
        client_id="prm-it-consumer",
        group_id=f"it-group-{uuid.uuid4().hex[:12]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        key_deserializer=DefaultSerializer(),
        value_deserializer=JsonSerializer(),
        consumer_timeout_ms=15_000,  # safety net: stop iterating if nothing arrives
    )
    received = []  # (partition, offset, key, value)
    reached = {}
    deadline = time.monotonic() + TIMEOUT_S
    try:
        for record in consumer:
            received.append((record.partition, record.offset, record.key, record.value))
            reached[record.partition] = record.offset + 1
            if all(reached.get(p, 0) >= end for p, end in end_offsets.items()):
                break
            assert time.monotonic() < deadline, "consuming took too long"
    finally:
        consumer.close()

    # --- every message exactly once.
    ids = [value["id"] for _, _, _, value in received]
    missing = {m for m, _, _ in sent} - set(ids)
    assert not missing, f"{len(missing)} messages never arrived, e.g. {sorted(missing)[:5]}"
    assert len(ids) == len(set(ids)) == MESSAGES, "some message arrived more than once"
    positions = [(p, o) for p, o, _, _ in received]
    assert len(positions) == len(set(positions))
    assert sum(end_offsets.values()) == MESSAGES, "the log holds more records than were sent"

    # --- per-key order, and one partition per key.
    by_key = defaultdict(list)
    partition_of_key = defaultdict(set)
    for partition, _, key, value in received:
        assert value["key"] == key
        by_key[key].append(value["seq"])
        partition_of_key[key].add(partition)
    for key in KEYS:
        assert by_key[key] == list(range(next_seq[key])), f"order broken for {key}: {by_key[key]}"
        assert len(partition_of_key[key]) == 1, f"{key} spread over partitions {partition_of_key[key]}"
