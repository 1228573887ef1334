"""The relay against the real PostgreSQL and Kafka: everything, once, in order, and after a crash.

Every test uses its own event-store schema and its own topic prefix, so tests never
see each other's events. Waits are bounded polling loops on positions and offsets.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.errors import IllegalStateError, KafkaTimeoutError
from psycopg import sql

from api.bootstrap import build_program
from api.sample import Step, generate, run_commands
from api.settings import Settings
from consumers.relay import DIRECT_KEY, Relay, RelayLocked, halt_producer, relay_producer, route
from consumers.topics import TopicNames, admin_client
from domain.application import PartnerProgram
from projections.envelope import CONTENT_TYPE, EventEnvelope
from projections.store_reader import read_store
from tests.helpers import event_topics

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2025, 1, 1, 0, 30, tzinfo=UTC)


# ---- fixtures ------------------------------------------------------------------
@pytest.fixture
def topics(kafka_bootstrap: str) -> Iterator[TopicNames]:
    """The relay's two topics under a prefix unique to the test; deleted afterwards."""
    with event_topics(kafka_bootstrap, "relay") as names:
        yield names


@pytest.fixture
def settings(pg_url: str, pg_schema: str) -> Settings:
    return Settings(store="postgres", database_url=pg_url, database_schema=pg_schema)


@pytest.fixture
def program(settings: Settings) -> Iterator[PartnerProgram]:
    app = build_program(settings)
    yield app
    app.close()


@pytest.fixture
def connect(pg_url: str) -> Callable[[], psycopg.Connection[Any]]:
    return lambda: psycopg.connect(pg_url, connect_timeout=5)


# ---- helpers -------------------------------------------------------------------
@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: str
    value: bytes
    headers: tuple[tuple[str, bytes], ...]

    @property
    def envelope(self) -> EventEnvelope:
        return EventEnvelope.from_json(self.value)


def wait_until(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(interval)


def has_partitions(consumer: Any, topic: str) -> bool:
    return bool(consumer.partitions_for_topic(topic))


def consume_all(bootstrap: str, names: Sequence[str], timeout: float = 60) -> list[Record]:
    """Every record of the topics from offset 0 up to the end offsets seen at the start, in partition order."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        partitions: list[TopicPartition] = []
        for name in names:
            wait_until(functools.partial(has_partitions, consumer, name), 15, f"metadata of {name}")
            partitions += [TopicPartition(name, p) for p in sorted(consumer.partitions_for_topic(name))]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        records: list[Record] = []
        deadline = time.monotonic() + timeout
        while any(consumer.position(tp) < end for tp, end in ends.items()):
            assert time.monotonic() < deadline, "timed out reading the topics back"
            for tp, batch in consumer.poll(timeout_ms=200).items():
                records += [
                    Record(tp.topic, tp.partition, m.offset, m.key.decode(), m.value, tuple(m.headers))
                    for m in batch
                    if m.offset < ends[tp]
                ]
        return sorted(records, key=lambda r: (r.topic, r.partition, r.offset))
    finally:
        consumer.close()


def tracked_position(pg_url: str, schema: str, relay_name: str = "prm-events") -> int:
    with psycopg.connect(pg_url) as conn:
        exists = conn.execute("SELECT to_regclass(%s)", (f"{schema}.prm_relay_position",)).fetchone()
        if not exists or exists[0] is None:
            return 0
        row = conn.execute(
            sql.SQL("SELECT position FROM {} WHERE relay_name = %s").format(
                sql.Identifier(schema, "prm_relay_position")
            ),
            (relay_name,),
        ).fetchone()
        return int(row[0]) if row else 0


def check_on_kafka(
    records: Sequence[Record], store: Sequence[EventEnvelope], topics: TopicNames, *, complete: bool = True
) -> Counter[str]:
    """The contract, checked record by record; returns how many copies of each id are on Kafka.

    Every record is an event of the store, byte for byte its envelope, routed by ``route``;
    per key, one partition, and the first copies of the events are in store order, strictly
    increasing. ``complete``: every store event is there (else: per key, a prefix of them).
    """
    by_id = {e.id: e for e in store}
    copies: Counter[str] = Counter()
    firsts: dict[tuple[str, str], list[int]] = defaultdict(list)
    partition_of: dict[tuple[str, str], int] = {}
    seen: set[str] = set()
    for record in records:
        assert record.headers == (("content-type", CONTENT_TYPE.encode()),)
        envelope = record.envelope
        expected = by_id.get(envelope.id)
        assert expected is not None, f"{envelope.id} on Kafka is not an event of the store"
        assert record.value == expected.to_json(), "a copy differs from the store's envelope"
        target = route(expected, topics)
        assert (record.topic, record.key) == (target.topic, target.key)
        key = (record.topic, record.key)
        assert partition_of.setdefault(key, record.partition) == record.partition, f"{key} spans partitions"
        copies[envelope.id] += 1
        if envelope.id not in seen:
            seen.add(envelope.id)
            firsts[key].append(envelope.sequence)
    wanted: dict[tuple[str, str], list[int]] = defaultdict(list)
    for envelope in store:
        target = route(envelope, topics)
        wanted[(target.topic, target.key)].append(envelope.sequence)
    for key, sequences in firsts.items():
        assert sequences == sorted(set(sequences)), f"{key}: not strictly increasing"
        assert sequences == wanted[key][: len(sequences)], f"{key}: not the store's order"
    if complete:
        assert seen == set(by_id), f"{len(set(by_id) - seen)} store events are missing on Kafka"
    return copies


def record_steps(program: PartnerProgram, steps: Sequence[Step]) -> None:
    run_commands(program, steps)


def change_settings(program: PartnerProgram, days: list[int], at: datetime) -> None:
    program.change_settings({"contract_alert_days": days}, actor="admin@prm", reason="alert earlier", at=at)


class RecordingProducer:
    """A real producer that also notes the order of its calls (to check the flush rule)."""

    def __init__(self, inner: Any, calls: list[tuple[str, str]]) -> None:
        self._inner = inner
        self._calls = calls

    def send(self, topic: str, **kwargs: Any) -> Any:
        self._calls.append(("send", topic))
        return self._inner.send(topic, **kwargs)

    def flush(self, timeout: float | None = None) -> None:
        self._calls.append(("flush", ""))
        self._inner.flush(timeout=timeout)

    def __getattr__(self, name: str) -> Any:  # close, _sender…
        return getattr(self._inner, name)


def drain(relay: Relay, limit: int = 1000) -> int:
    total = 0
    for _ in range(limit):
        published = relay.run_once()
        total += published
        if published == 0:
            return total
    raise AssertionError("the relay never caught up")


# ---- (a) + (c): the sample programme, exactly once, in order; lag back to 0 -------------
def test_relays_the_sample_programme_exactly_once_in_order(
    program: PartnerProgram,
    topics: TopicNames,
    connect: Callable[[], psycopg.Connection[Any]],
    kafka_bootstrap: str,
    pg_url: str,
    pg_schema: str,
    record_property: Callable[[str, object], None],
) -> None:
    steps = generate(seed=5, scale=1)
    change_settings(program, [60, 30, 7], T0)
    record_steps(program, steps[: len(steps) // 2])
    change_settings(program, [90, 30], steps[len(steps) // 2].at)  # a programme event mid-stream
    record_steps(program, steps[len(steps) // 2 :])
    store = list(read_store(program))
    assert len(store) > 3000

    calls: list[tuple[str, str]] = []
    relay = Relay(
        program, lambda: RecordingProducer(relay_producer(kafka_bootstrap), calls), connect, topics, batch_size=500
    )
    try:
        assert relay.lag() == program.max_position() == store[-1].sequence
        started = time.monotonic()
        assert drain(relay) == len(store)
        elapsed = time.monotonic() - started
        assert relay.lag() == 0
        assert tracked_position(pg_url, pg_schema) == store[-1].sequence
    finally:
        relay.close()
    record_property("relay_seconds", round(elapsed, 2))
    record_property("events", len(store))

    # Every programme event is acked before anything after it is sent.
    for index, call in enumerate(calls[:-1]):
        if call == ("send", topics.program):
            assert calls[index + 1] == ("flush", ""), f"call {index + 1} after a programme event is not a flush"

    records = consume_all(kafka_bootstrap, [topics.events, topics.program])
    copies = check_on_kafka(records, store, topics)
    assert set(copies.values()) == {1}, "exactly once without failures"
    keys = {r.key for r in records if r.topic == topics.events}
    partners = {e.partner_id for e in store if e.partner_id}
    assert keys == partners | {DIRECT_KEY}
    program_topic = [r.envelope for r in records if r.topic == topics.program]
    assert {e.kind for e in program_topic} == {"plan", "program"}
    assert [e.sequence for e in program_topic] == [e.sequence for e in store if e.kind in ("plan", "program")]
    assert len([e for e in program_topic if e.kind == "program"]) == 3  # started + two settings changes

    # (c) lag: new events make it positive; the running relay brings it back to 0.
    before = program.max_position()
    program.apply_partner(
        partner_id="P-LAG-1", name="Lag Test Co", type="reseller", region="VN", size="small", actor="portal"
    )
    program.approve_partner("P-LAG-1", actor="channel-manager")
    change_settings(program, [45], datetime.now(UTC))
    follower = Relay(program, lambda: relay_producer(kafka_bootstrap), connect, topics, poll_interval=0.05)
    assert follower.lag() == program.max_position() - before >= 3
    stop = threading.Event()
    thread = threading.Thread(target=follower.run_forever, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_until(lambda: follower.lag() == 0, 30, "lag 0")
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert tracked_position(pg_url, pg_schema) == program.max_position()
    records = consume_all(kafka_bootstrap, [topics.events, topics.program])
    assert set(check_on_kafka(records, list(read_store(program)), topics).values()) == {1}


# ---- (b) crash safety: SIGKILL mid-stream, restart ------------------------------
def start_relay_process(
    settings: Settings, kafka_bootstrap: str, topics: TopicNames, log: Path, batch_size: int
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PRM_STORE": "postgres",
        "PRM_DATABASE_URL": settings.database_url or "",
        "PRM_DATABASE_SCHEMA": settings.database_schema or "",
        "PRM_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "PRM_LOG_FORMAT": "json",
        "PRM_LOG_LEVEL": "INFO",
    }
    command = [
        sys.executable,
        "-m",
        "api.cli",
        "relay",
        "--topic-prefix",
        topics.prefix,
        "--batch-size",
        str(batch_size),
        "--poll-interval",
        "0.02",
        "--progress-interval",
        "1",
    ]
    with log.open("ab") as out:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def test_sigkill_mid_stream_then_restart_loses_nothing_and_keeps_order(
    program: PartnerProgram,
    topics: TopicNames,
    settings: Settings,
    kafka_bootstrap: str,
    pg_url: str,
    pg_schema: str,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    steps = generate(seed=11, scale=1)
    log = tmp_path / "relay.log"
    change_settings(program, [60, 30], T0)
    record_steps(program, steps[:900])  # a backlog: the relay will be busy publishing when it is killed

    # More events are recorded all along, from another thread.
    failures: list[BaseException] = []
    cursor = {"next": 900}

    def keep_recording(until: int) -> None:
        try:
            while cursor["next"] < until:
                record_steps(program, steps[cursor["next"] : cursor["next"] + 10])
                cursor["next"] += 10
        except BaseException as exc:
            failures.append(exc)

    recorder = threading.Thread(target=keep_recording, args=(1500,), daemon=True)
    recorder.start()
    first = start_relay_process(settings, kafka_bootstrap, topics, log, batch_size=50)
    try:
        # Kill it right after its first recorded batch: it is catching up, i.e. mid-stream.
        wait_until(lambda: tracked_position(pg_url, pg_schema) > 0 or first.poll() is not None, 60, "a first batch")
        first.send_signal(signal.SIGKILL)
        assert first.wait(timeout=30) == -signal.SIGKILL, log.read_text()[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    killed_at = tracked_position(pg_url, pg_schema)  # read after its death: it may have recorded once more
    assert 0 < killed_at < program.max_position(), "killed while behind the store, i.e. mid-stream"
    recorder.join(timeout=120)
    assert not recorder.is_alive() and not failures, failures
    assert tracked_position(pg_url, pg_schema) == killed_at

    second = start_relay_process(settings, kafka_bootstrap, topics, log, batch_size=50)
    try:
        keep_recording(len(steps))  # while the restarted relay runs
        assert not failures, failures
        change_settings(program, [30], steps[-1].at)
        final = program.max_position()
        wait_until(lambda: tracked_position(pg_url, pg_schema) == final, 120, f"position {final}")
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0, log.read_text()[-3000:]
    finally:
        if second.poll() is None:
            second.kill()
            second.wait()

    store = list(read_store(program))
    records = consume_all(kafka_bootstrap, [topics.events, topics.program])
    copies = check_on_kafka(records, store, topics)
    sequence_of = {e.id: e.sequence for e in store}
    duplicated = sorted(sequence_of[i] for i, n in copies.items() if n > 1)
    # Only what came after the recorded position can have been published twice, and only once more.
    assert all(s > killed_at for s in duplicated)
    assert max(copies.values()) <= 2
    record_property("killed_at", killed_at)
    record_property("events", len(store))
    record_property("republished", len(duplicated))
    assert '"event": "relay.progress"' in log.read_text()


def test_cli_once_publishes_what_is_recorded_then_exits(
    program: PartnerProgram, topics: TopicNames, settings: Settings, kafka_bootstrap: str, tmp_path: Path
) -> None:
    record_steps(program, generate(seed=2, scale=1)[:120])
    store = list(read_store(program))
    command = [sys.executable, "-m", "api.cli", "relay", "--once", "--topic-prefix", topics.prefix]
    env = {
        **os.environ,
        "PRM_STORE": "postgres",
        "PRM_DATABASE_URL": settings.database_url or "",
        "PRM_DATABASE_SCHEMA": settings.database_schema or "",
        "PRM_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "PRM_LOG_FORMAT": "json",
    }
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert f"published {len(store)} events; position {store[-1].sequence}, lag 0" in done.stdout.decode()
    again = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, timeout=120, check=False)
    assert again.returncode == 0 and "published 0 events" in again.stdout.decode()
    copies = check_on_kafka(consume_all(kafka_bootstrap, [topics.events, topics.program]), store, topics)
    assert set(copies.values()) == {1}

    sqlite = {**env, "PRM_STORE": "sqlite", "PRM_SQLITE_PATH": str(tmp_path / "x.sqlite")}
    refused = subprocess.run(command, cwd=ROOT, env=sqlite, capture_output=True, timeout=120, check=False)
    assert refused.returncode == 2 and "PRM_STORE=postgres" in refused.stderr.decode()


# ---- crash between the broker's ack and the record: same ids again --------------
def test_crash_after_ack_before_record_republishes_the_same_events(
    program: PartnerProgram,
    topics: TopicNames,
    connect: Callable[[], psycopg.Connection[Any]],
    kafka_bootstrap: str,
    pg_url: str,
    pg_schema: str,
) -> None:
    record_steps(program, generate(seed=3, scale=1)[:300])
    store = list(read_store(program))
    crashing = Relay(program, lambda: relay_producer(kafka_bootstrap), connect, topics, batch_size=100)
    original_save = crashing.tracker.save
    saves: list[int] = []

    def save_then_crash(position: int) -> None:
        if len(saves) == 2:
            raise RuntimeError("simulated crash after the broker's ack")
        saves.append(position)
        original_save(position)

    crashing.tracker.save = save_then_crash  # type: ignore[method-assign]
    assert crashing.run_once() == 100 and crashing.run_once() == 100
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashing.run_once()
    assert tracked_position(pg_url, pg_schema) == 200

    # While the crashed process still holds the tracking lock, a second relay stays on standby.
    standby = Relay(program, lambda: relay_producer(kafka_bootstrap), connect, topics, batch_size=100)
    with pytest.raises(RelayLocked):
        standby.run_once()
    crashing.close()  # the process dies: its connection and lock go away

    restarted = Relay(program, lambda: relay_producer(kafka_bootstrap), connect, topics, batch_size=100)
    try:
        assert restarted.published_position == 200
        assert drain(restarted) == len(store) - 200
        assert restarted.lag() == 0
    finally:
        restarted.close()
        standby.close()

    copies = check_on_kafka(consume_all(kafka_bootstrap, [topics.events, topics.program]), store, topics)
    twice = sorted(e.sequence for e in store if copies[e.id] == 2)
    assert twice == list(range(201, 301)), "exactly the acked-but-unrecorded batch is published again"
    assert set(copies.values()) == {1, 2}


# ---- failures: broker refuses a record, DB and broker unreachable -----------------
def test_a_refused_record_stalls_the_relay_without_skipping_or_reordering(
    program: PartnerProgram,
    topics: TopicNames,
    connect: Callable[[], psycopg.Connection[Any]],
    kafka_bootstrap: str,
    pg_url: str,
    pg_schema: str,
) -> None:
    """A record the broker refuses (too large for the topic) fails asynchronously, mid-batch.

    Nothing after it may be written on its partition, the relay must retry with a new
    producer (kafka-python 3.0.12 makes a non-retriable error fatal for an idempotent
    producer), never record past it, and once an operator fixes the topic, publish
    everything, with first copies still in store order.
    """
    steps = generate(seed=9, scale=1)
    record_steps(program, steps[:200])
    big = program.record_sale(
        sale_id="S-BIG-1",
        partner_id=None,
        customer={"name": "Công ty Cổ phần Rất Lớn", "domain": "ratlon.vn", "country": "VN"},
        lines=[
            {
                "sku": f"HW-RACK-{i:03d}",
                "category": "hardware",
                "quantity": 1,
                "unit_price_minor": 1000,
                "currency": "VND",
            }
            for i in range(80)
        ],
        occurred_at=T0,
        source="erp/hanoi",
    )
    assert big.position is not None
    for n in range(5):  # direct sales right behind it: same key, same partition, same relay batch
        program.record_sale(
            sale_id=f"S-AFTER-{n}",
            partner_id=None,
            customer={"name": f"Khách hàng {n}", "domain": f"kh{n}.vn", "country": "VN"},
            lines=[
                {"sku": "CRM-PRO-12M", "category": "software", "quantity": 1, "unit_price_minor": 5, "currency": "VND"}
            ],
            occurred_at=T0,
            source="erp/hanoi",
        )
    record_steps(program, steps[200:300])
    change_settings(program, [10], T0)
    store = list(read_store(program))
    big_event = next(e for e in store if e.sequence == big.position)
    assert len(big_event.to_json()) > 6000

    admin = admin_client(kafka_bootstrap, client_id="prm-test-relay-admin")
    resource = ConfigResource(ConfigResourceType.TOPIC, topics.events, {"max.message.bytes": "4096"})
    admin.alter_configs([resource])
    wait_until(lambda: topic_config(admin, topics.events, "max.message.bytes") == "4096", 15, "max.message.bytes")

    producers = 0
    connections = 0

    def flaky_producer() -> Any:
        nonlocal producers
        producers += 1
        if producers == 1:
            raise KafkaTimeoutError("simulated: Unable to bootstrap (broker unreachable at start)")
        return relay_producer(kafka_bootstrap)

    def flaky_connect() -> psycopg.Connection[Any]:
        nonlocal connections
        connections += 1
        if connections == 1:
            raise psycopg.OperationalError("simulated: database unreachable")
        return connect()

    relay = Relay(program, flaky_producer, flaky_connect, topics, batch_size=500, backoff_initial=0.02, backoff_max=0.2)
    stop = threading.Event()
    thread = threading.Thread(target=relay.run_forever, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_until(lambda: producers >= 5, 60, "several publication attempts")
        # Stalled before the refused record: never recorded past it, nothing after it on its partition.
        assert tracked_position(pg_url, pg_schema) < big_event.sequence
        stalled = consume_all(kafka_bootstrap, [topics.events, topics.program])
        check_on_kafka(stalled, store, topics, complete=False)
        on_kafka = {r.envelope.sequence for r in stalled}
        assert big_event.sequence not in on_kafka
        assert not [s for s in on_kafka if s > big_event.sequence and route_key(store, s, topics) == DIRECT_KEY]

        # The operator fixes the topic; the relay catches up on its own.
        admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topics.events, {"max.message.bytes": "1048588"})])
        wait_until(lambda: tracked_position(pg_url, pg_schema) == store[-1].sequence, 60, "catch-up")
    finally:
        stop.set()
        thread.join(timeout=30)
        admin.close()
    assert not thread.is_alive()
    assert relay.lag() == 0
    copies = check_on_kafka(consume_all(kafka_bootstrap, [topics.events, topics.program]), store, topics)
    assert copies[big_event.id] == 1


def test_batches_split_for_a_small_topic_limit_are_still_acked_once(
    program: PartnerProgram,
    topics: TopicNames,
    connect: Callable[[], psycopg.Connection[Any]],
    kafka_bootstrap: str,
) -> None:
    """A topic whose max.message.bytes is below the producer's batch: kafka-python splits the batch.

    kafka-python 3.0.12's ``flush()`` then raises "Future not done" although every record
    gets acked: the relay must wait on the records' own futures, not give up and retry forever.
    """
    record_steps(program, generate(seed=4, scale=1)[:150])
    store = list(read_store(program))
    admin = admin_client(kafka_bootstrap, client_id="prm-test-relay-admin")
    try:
        admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topics.events, {"max.message.bytes": "4096"})])
        wait_until(lambda: topic_config(admin, topics.events, "max.message.bytes") == "4096", 15, "max.message.bytes")
    finally:
        admin.close()
    relay = Relay(program, lambda: relay_producer(kafka_bootstrap), connect, topics, batch_size=1000)
    try:
        assert drain(relay) == len(store)
    finally:
        relay.close()
    copies = check_on_kafka(consume_all(kafka_bootstrap, [topics.events, topics.program]), store, topics)
    assert set(copies.values()) == {1}


def route_key(store: Sequence[EventEnvelope], sequence: int, topics: TopicNames) -> str:
    envelope = next(e for e in store if e.sequence == sequence)
    return route(envelope, topics).key


def topic_config(admin: Any, topic: str, key: str) -> str:
    described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic, [key])], config_filter="all")
    return str(described["topic"][topic][key]["value"])


def test_halting_the_producer_keeps_buffered_records_off_kafka(kafka_bootstrap: str, topics: TopicNames) -> None:
    """How the relay stops its producer at the first failed record.

    kafka-python 3.0.12's ``close(timeout=0)`` cannot force-close: it flushes first, and
    ``flush(0)`` raises while records are pending. ``halt_producer`` (the sender's ``force_close``)
    fails every buffered record, and none of them reaches the broker.
    """
    quirk = relay_producer(kafka_bootstrap, linger_ms=10_000, delivery_timeout_ms=60_000)
    try:
        quirk.send(topics.program, value=b"{}", key=b"quirk")
        with pytest.raises(KafkaTimeoutError):
            quirk.close(timeout=0)
    finally:
        quirk.close(timeout=10)

    producer = relay_producer(kafka_bootstrap, linger_ms=10_000, delivery_timeout_ms=60_000)
    try:
        futures = [producer.send(topics.events, value=b"{}", key=b"halted") for _ in range(5)]
        halt_producer(producer)
        for future in futures:
            with pytest.raises(IllegalStateError):
                future.get(timeout=10)
    finally:
        producer.close(timeout=10)
    assert consume_all(kafka_bootstrap, [topics.events]) == []
