"""The ingest consumer against the real broker and PostgreSQL: volume with bad and duplicate messages,
SIGKILL mid-stream, and two members of one group sharing the partitions across a rebalance.

Every wait is a bounded poll on counts or offsets (``wait_until``), never a fixed sleep.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from eventsourcing.persistence import OperationalError as EsOperationalError
from eventsourcing.persistence import RecordConflictError
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from psycopg import sql

from api.bootstrap import build_program
from api.cli_ingest import build_ingest
from api.logs import configure_logging
from api.settings import Settings
from consumers.ingest import IngestConsumer, IngestStats
from consumers.wire import InboundTopics
from projections.store_reader import read_store
from tests.helpers import onboard_partner

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PARTITIONS = 4
PARTNERS = ["P-0001", "P-0002", "P-0003", "P-0004", "P-0005"]
T0 = datetime(2026, 2, 2, 8, 0, tzinfo=UTC)
CE_HEADERS = [("content-type", b"application/cloudevents+json")]


# --------------------------------------------------------------------------- helpers


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.05) -> None:
    """Poll ``predicate`` until it holds; fail after ``timeout_s`` (a bounded poll, not a sleep)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


@pytest.fixture
def topics(kafka_bootstrap: str) -> Iterator[InboundTopics]:
    names = InboundTopics.with_prefix(f"it-{uuid.uuid4().hex[:10]}.")
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(names.sales, PARTITIONS, 1), NewTopic(names.deadletter, 2, 1)])
    admin.wait_for_topics([names.sales, names.deadletter], timeout_ms=30_000)
    yield names
    admin.delete_topics([names.sales, names.deadletter])
    admin.close()


@pytest.fixture
def settings(pg_url: str, pg_schema: str, kafka_bootstrap: str) -> Settings:
    configure_logging("console", "WARNING")  # the consumers log every dead letter at INFO
    return Settings(
        store="postgres",
        database_url=pg_url,
        database_schema=pg_schema,
        kafka_bootstrap=kafka_bootstrap,
        log_format="json",
        log_level="WARNING",
    )


def onboard_partners(settings: Settings) -> None:
    """Plan ``STD`` first; then each partner applies, is approved, signs, and completes onboarding."""
    program = build_program(settings)
    try:
        program.create_plan(plan_id="STD", name="Standard", actor="admin", at=T0 - timedelta(days=60))
        for partner_id in PARTNERS:
            at = T0 - timedelta(days=30)
            onboard_partner(program, partner_id, at, person="lan@p.vn")
            assert program.partner(partner_id).status == "active"
    finally:
        program.close()


# --------------------------------------------------------------------------- the inbound stream


@dataclass
class Message:
    key: bytes | None
    value: bytes | None
    expect: str  # "recorded", "duplicate" or the dead-letter code
    kind: str
    partition: int = -1
    offset: int = -1


@dataclass
class Stream:
    messages: list[Message] = field(default_factory=list)
    sales: set[str] = field(default_factory=set)
    refunds: set[str] = field(default_factory=set)
    opportunities: set[str] = field(default_factory=set)

    def expected(self) -> Counter[str]:
        return Counter(m.expect for m in self.messages)

    def dead_letters(self) -> dict[tuple[int, int], Message]:
        return {(m.partition, m.offset): m for m in self.messages if m.expect not in ("recorded", "duplicate")}


def envelope(event_type: str, data: dict[str, Any], *, event_id: str | None = None, subject: str) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": event_id or str(uuid.uuid4()),
        "source": "erp/test",
        "type": event_type,
        "time": "2026-03-01T10:00:02Z",
        "subject": subject,
        "datacontenttype": "application/json",
        "data": data,
    }


def dumps(document: Any) -> bytes:
    return orjson.dumps(document)


def iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


class Generator:
    """A deterministic inbound stream: exact shares of valid, invalid (varied) and duplicate messages."""

    INVALID = (
        "not_json",
        "not_cloudevent",
        "unknown_type",
        "schema_violation",
        "unknown_partner",
        "refund_exceeds_sale",
        "currency_mismatch",
    )

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.stream = Stream()
        self.sale_totals: dict[str, int] = {}
        self.refundable: list[str] = []
        self.valid: list[Message] = []
        self.sale_docs: dict[str, dict[str, Any]] = {}
        self.counter = 0

    def _next(self) -> int:
        self.counter += 1
        return self.counter

    def _customer(self, n: int) -> dict[str, Any]:
        return {"name": f"Khách hàng {n}", "domain": f"kh{n}.vn", "tax_id": f"01{n:08d}", "country": "VN"}

    def _sale_data(self, n: int, partner_id: str | None) -> dict[str, Any]:
        lines = [
            {
                "sku": self.rng.choice(["CRM-PRO-12M", "CRM-STD-12M", "SVC-SUPPORT-12M"]),
                "category": self.rng.choice(["software", "services"]),
                "quantity": self.rng.randint(1, 5),
                "unit_price_minor": self.rng.randint(1, 50) * 1_000_000,
                "currency": "VND",
            }
            for _ in range(self.rng.randint(1, 3))
        ]
        return {
            "sale_id": f"S-{n:06d}",
            "partner_id": partner_id,
            "registration_id": None,
            "customer": self._customer(n),
            "lines": lines,
            "occurred_at": iso(T0 + timedelta(minutes=n)),
        }

    def _add(self, key: str | None, value: bytes | None, expect: str, kind: str) -> Message:
        message = Message(key.encode() if key is not None else None, value, expect, kind)
        self.stream.messages.append(message)
        return message

    # valid ---------------------------------------------------------------------------------------
    def valid_message(self) -> None:
        roll = self.rng.random()
        n = self._next()
        if roll < 0.17 and self.refundable:
            sale_id = self.refundable.pop(self.rng.randrange(len(self.refundable)))
            refund_id = f"RF-{n:06d}"
            data = {
                "sale_id": sale_id,
                "refund_id": refund_id,
                "amount_minor": self.rng.randint(1, self.sale_totals[sale_id] // 2),
                "currency": "VND",
                "occurred_at": iso(T0 + timedelta(days=20, minutes=n)),
                "reason": "returned",
            }
            message = self._add(
                sale_id, dumps(envelope("prm.sale.refunded.v1", data, subject=sale_id)), "recorded", "refund"
            )
            self.stream.refunds.add(refund_id)
        elif roll < 0.25:
            opportunity_id = f"OPP-{n:06d}"
            data = {
                "opportunity_id": opportunity_id,
                "owner": "hanh.vu@prm.vn",
                "customer": self._customer(n),
                "estimated_value_minor": self.rng.randint(1, 900) * 1_000_000,
                "currency": "VND",
                "opened_at": iso(T0 + timedelta(minutes=n)),
            }
            document = envelope("prm.opportunity.opened.v1", data, subject=opportunity_id)
            message = self._add(opportunity_id, dumps(document), "recorded", "opportunity")
            self.stream.opportunities.add(opportunity_id)
        else:
            partner_id = self.rng.choice([*PARTNERS, None])
            data = self._sale_data(n, partner_id)
            sale_id = data["sale_id"]
            message = self._add(
                sale_id, dumps(envelope("prm.sale.recorded.v1", data, subject=sale_id)), "recorded", "sale"
            )
            self.sale_totals[sale_id] = sum(line["quantity"] * line["unit_price_minor"] for line in data["lines"])
            self.refundable.append(sale_id)
            self.sale_docs[sale_id] = data
            self.stream.sales.add(sale_id)
        self.valid.append(message)

    # duplicates ----------------------------------------------------------------------------------
    def duplicate_message(self) -> None:
        if self.rng.random() < 0.5 or not self.sale_docs:
            original = self.rng.choice(self.valid)  # the same CloudEvents id again, byte for byte
            self._add(original.key.decode() if original.key else None, original.value, "duplicate", "same_id")
        else:
            sale_id = self.rng.choice(sorted(self.sale_docs))  # a new id, the same sale data
            document = envelope("prm.sale.recorded.v1", self.sale_docs[sale_id], subject=sale_id)
            self._add(sale_id, dumps(document), "duplicate", "new_id_same_sale")

    # invalid -------------------------------------------------------------------------------------
    def invalid_message(self, code: str) -> None:
        n = self._next()
        key = f"S-{n:06d}"
        rng = self.rng
        if code == "not_json":
            value = rng.choice([b"{not json", b"\xff\xfe\x00garbage", b"", b"sale S-1 recorded", None])
            self._add(key, value, code, "not_json")
        elif code == "not_cloudevent":
            document: Any = envelope("prm.sale.recorded.v1", self._sale_data(n, None), subject=key)
            variant = rng.randrange(4)
            if variant == 0:
                del document["specversion"]
            elif variant == 1:
                document["specversion"] = "0.3"
            elif variant == 2:
                document["source"] = ""
            else:
                document = [document]
            self._add(key, dumps(document), code, "not_cloudevent")
        elif code == "unknown_type":
            document = envelope("prm.sale.cancelled.v1", {"sale_id": key}, subject=key)
            self._add(key, dumps(document), code, "unknown_type")
        elif code == "schema_violation":
            data = self._sale_data(n, rng.choice(PARTNERS))
            variant = rng.randrange(6)
            if variant == 0:
                data["lines"][0]["unit_price_minor"] = 1_500_000.5  # a float amount
            elif variant == 1:
                data["lines"][0]["quantity"] = "3"  # a numeric string
            elif variant == 2:
                data["occurred_at"] = "2026-03-01T09:59:41"  # a naive time
            elif variant == 3:
                del data["customer"]
            elif variant == 4:
                data["lines"][0]["quantity"] = True
            else:
                data["lines"][0]["unit_price_minor"] = 1_000_000.0  # integral, but still a float
            self._add(key, dumps(envelope("prm.sale.recorded.v1", data, subject=key)), code, "schema_violation")
        elif code == "unknown_partner":
            data = self._sale_data(n, "P-9999")
            self._add(key, dumps(envelope("prm.sale.recorded.v1", data, subject=key)), code, "unknown_partner")
        elif code == "refund_exceeds_sale":
            sale_id = rng.choice(sorted(self.sale_totals))
            data = {
                "sale_id": sale_id,
                "refund_id": f"RF-X{n:06d}",
                "amount_minor": self.sale_totals[sale_id] + 1,
                "currency": "VND",
                "occurred_at": iso(T0 + timedelta(days=25)),
                "reason": "too much",
            }
            self._add(sale_id, dumps(envelope("prm.sale.refunded.v1", data, subject=sale_id)), code, code)
        elif code == "currency_mismatch":
            if rng.random() < 0.5:  # a refund in another currency than its sale (the domain refuses it)
                sale_id = rng.choice(sorted(self.sale_totals))
                data = {
                    "sale_id": sale_id,
                    "refund_id": f"RF-C{n:06d}",
                    "amount_minor": 1,
                    "currency": "USD",
                    "occurred_at": iso(T0 + timedelta(days=25)),
                    "reason": None,
                }
                self._add(sale_id, dumps(envelope("prm.sale.refunded.v1", data, subject=sale_id)), code, "refund_ccy")
            else:  # lines of one sale in two currencies (the wire refuses it)
                data = self._sale_data(n, None)
                data["lines"].append({**data["lines"][0], "sku": "EXTRA", "currency": "USD"})
                self._add(key, dumps(envelope("prm.sale.recorded.v1", data, subject=key)), code, "mixed_lines")
        else:  # pragma: no cover
            raise AssertionError(code)

    def build(self, total: int, invalid_share: float = 0.05, duplicate_share: float = 0.05) -> Stream:
        n_invalid = round(total * invalid_share)
        n_duplicate = round(total * duplicate_share)
        quotas = {"valid": total - n_invalid - n_duplicate, "invalid": n_invalid, "duplicate": n_duplicate}
        invalid_codes = [self.INVALID[i % len(self.INVALID)] for i in range(n_invalid)]
        self.rng.shuffle(invalid_codes)
        for _ in range(20):  # a head start so duplicates and refunds have something to refer to
            self.valid_message()
            quotas["valid"] -= 1
        while any(quotas.values()):
            kinds = [k for k, v in quotas.items() for _ in range(v)]
            kind = self.rng.choice(kinds)
            quotas[kind] -= 1
            if kind == "valid":
                self.valid_message()
            elif kind == "duplicate":
                self.duplicate_message()
            else:
                self.invalid_message(invalid_codes.pop())
        return self.stream


def produce(bootstrap: str, topic: str, messages: list[Message]) -> float:
    """Send every message (original key, bytes and a content-type header); record where each landed."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=10, batch_size=256 * 1024)
    started = time.perf_counter()
    futures = [producer.send(topic, key=m.key, value=m.value, headers=CE_HEADERS) for m in messages]
    producer.flush(timeout=60)
    for message, future in zip(messages, futures, strict=True):
        metadata = future.get(timeout=60)
        message.partition, message.offset = metadata.partition, metadata.offset
    elapsed = time.perf_counter() - started
    producer.close()
    return elapsed


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        return {tp.partition: offset for tp, offset in consumer.end_offsets(partitions).items()}
    finally:
        consumer.close()


def committed_offsets(admin: KafkaAdminClient, group: str, topic: str) -> dict[int, int]:
    offsets = admin.list_group_offsets({group: None}).get(group, {})
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset >= 0}


def read_all(bootstrap: str, topic: str, minimum: int, timeout_s: float = 60) -> list[Any]:
    """Every record of ``topic`` once at least ``minimum`` are there."""
    wait_until(lambda: sum(end_offsets(bootstrap, topic).values()) >= minimum, timeout_s, f"{minimum} on {topic}", 0.2)
    ends = end_offsets(bootstrap, topic)
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    partitions = [TopicPartition(topic, p) for p in ends]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    records: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while any(consumer.position(tp) < ends[tp.partition] for tp in partitions):
        assert time.monotonic() < deadline, f"could not read {topic} to its end"
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(batch)
    consumer.close()
    return records


def check_store(settings: Settings, stream: Stream) -> None:
    """Every valid fact is in the store exactly once, and nothing else is."""
    program = build_program(settings)
    try:
        by_type: dict[str, list[str]] = {}
        for event in read_store(program):
            value = event.data.get("refund_id") if event.type == "prm.sale.refunded.v1" else event.subject
            by_type.setdefault(event.type, []).append(str(value))
    finally:
        program.close()
    sales = by_type.get("prm.sale.recorded.v1", [])
    refunds = by_type.get("prm.sale.refunded.v1", [])
    opportunities = by_type.get("prm.opportunity.opened.v1", [])
    assert len(sales) == len(set(sales)) and set(sales) == stream.sales
    assert len(refunds) == len(set(refunds)) and set(refunds) == stream.refunds
    assert len(opportunities) == len(set(opportunities)) and set(opportunities) == stream.opportunities


def check_dead_letters(bootstrap: str, topics: InboundTopics, stream: Stream, *, exactly_once: bool) -> None:
    """Each invalid message is on the dead-letter topic: original key, bytes and headers, right code."""
    expected = stream.dead_letters()
    records = read_all(bootstrap, topics.deadletter, len(expected))
    seen: Counter[tuple[int, int]] = Counter()
    for record in records:
        headers = dict(record.headers)
        coordinates = (int(headers["prm-source-partition"]), int(headers["prm-source-offset"]))
        original = expected[coordinates]
        seen[coordinates] += 1
        assert headers["prm-source-topic"].decode() == topics.sales
        assert headers["prm-error-code"].decode() == original.expect, (original.kind, headers["prm-error-detail"])
        assert headers["prm-error-detail"], "a readable detail"
        assert headers["content-type"] == b"application/cloudevents+json", "the original headers are kept"
        assert record.key == original.key
        assert record.value == original.value, "the original bytes, unchanged"
    assert set(seen) == set(expected), "every invalid message was dead-lettered"
    if exactly_once:
        assert max(seen.values()) == 1


def inbox_counts(settings: Settings, conn: psycopg.Connection[Any] | None = None) -> dict[str, int]:
    """Inbox rows by outcome (``{}`` before the consumer created the table)."""
    assert settings.database_url and settings.database_schema
    if conn is None:
        with psycopg.connect(settings.database_url, autocommit=True) as own:
            return inbox_counts(settings, own)
    query = sql.SQL("SELECT outcome, count(*) FROM {} GROUP BY outcome").format(
        sql.Identifier(settings.database_schema, "prm_inbox")
    )
    try:
        rows = conn.execute(query).fetchall()
    except psycopg.errors.UndefinedTable:
        return {}
    return {str(outcome): int(count) for outcome, count in rows}


# --------------------------------------------------------------------------- (a) volume


def test_ten_thousand_messages_with_bad_and_duplicate_ones(
    settings: Settings, topics: InboundTopics, kafka_bootstrap: str, record_property: Callable[[str, Any], None]
) -> None:
    total = int(os.environ.get("PRM_TEST_INGEST_VOLUME", "10000"))
    onboard_partners(settings)
    stream = Generator(seed=20260301).build(total)
    expected = stream.expected()
    assert expected["duplicate"] == round(total * 0.05)
    assert sum(v for k, v in expected.items() if k not in ("recorded", "duplicate")) == round(total * 0.05)
    produce_s = produce(kafka_bootstrap, topics.sales, stream.messages)

    worker = build_ingest(settings, group=f"g-{uuid.uuid4().hex[:8]}", topics=topics)
    try:
        started = time.perf_counter()
        deadline = time.monotonic() + 600
        while worker.stats.handled < total:
            assert time.monotonic() < deadline, f"ingested {worker.stats.handled} of {total}"
            worker.run_once(500)
        elapsed = time.perf_counter() - started
        stats = worker.stats
        committed = {
            tp.partition: worker.consumer.committed(tp)
            for tp in worker.consumer.assignment()
            if tp.topic == topics.sales
        }
    finally:
        worker.close()
        worker.program.close()

    rate = total / elapsed
    record_property("ingest_messages_per_s", round(rate))
    print(  # noqa: T201 - the measured throughput, shown with pytest -s
        f"\ningest: {total} messages in {elapsed:.1f}s = {rate:.0f} msg/s (produce {produce_s:.1f}s); {stats.as_dict()}"
    )

    # the counters add up: valid + dead-lettered + duplicates = sent
    assert stats.redelivered == 0
    assert stats.recorded == expected["recorded"]
    assert stats.duplicates == expected["duplicate"]
    assert dict(stats.dead_lettered) == {k: v for k, v in expected.items() if k not in ("recorded", "duplicate")}
    assert stats.recorded + stats.duplicates + stats.dead_letters == total
    # offsets are committed to the end of every partition
    assert committed == end_offsets(kafka_bootstrap, topics.sales)
    # the store holds every valid fact exactly once; the dead letters are the invalid messages, byte for byte
    check_store(settings, stream)
    check_dead_letters(kafka_bootstrap, topics, stream, exactly_once=True)
    # the inbox: one row per message id (same-id re-sends add none), none left pending
    new_id_duplicates = sum(1 for m in stream.messages if m.kind == "new_id_same_sale")
    assert inbox_counts(settings) == {
        "recorded": expected["recorded"],
        "duplicate": new_id_duplicates,
        "dead_lettered": total - expected["recorded"] - expected["duplicate"],
    }


def test_a_redelivered_batch_and_a_reused_id_have_no_further_effect(
    settings: Settings, topics: InboundTopics, kafka_bootstrap: str
) -> None:
    """The same records read again (offsets rewound) are skipped; one id reused for other data is a dead letter."""
    onboard_partners(settings)
    stream = Generator(seed=7).build(200, invalid_share=0.1, duplicate_share=0.1)
    first = next(m for m in stream.messages if m.kind == "sale")
    document = orjson.loads(first.value or b"")
    document["data"]["lines"][0]["quantity"] += 1  # same CloudEvents id, different data
    reused = Message(first.key, dumps(document), "duplicate_message_id", "reused_id")
    document = {**document, "id": str(uuid.uuid4())}  # a new id, an existing sale_id, different data
    changed_sale = Message(first.key, dumps(document), "duplicate_with_different_data", "changed_sale")
    stream.messages += [reused, changed_sale]
    produce(kafka_bootstrap, topics.sales, stream.messages)

    group = f"g-{uuid.uuid4().hex[:8]}"
    worker = build_ingest(settings, group=group, topics=topics)
    try:
        while worker.stats.handled < len(stream.messages):
            worker.run_once(500)
        assert worker.stats.dead_lettered["duplicate_message_id"] == 1
        assert worker.stats.dead_lettered["duplicate_with_different_data"] == 1
        first_pass = IngestStats()
        first_pass.add(worker.stats)
        # rewind: everything is delivered again, and nothing happens
        for tp in worker.consumer.assignment():
            worker.consumer.seek(tp, 0)
        while worker.stats.handled - first_pass.handled < len(stream.messages):
            worker.run_once(500)
        same_id_resends = sum(1 for m in stream.messages if m.kind == "same_id")
        assert worker.stats.redelivered == len(stream.messages) - same_id_resends
        assert worker.stats.duplicates == first_pass.duplicates + same_id_resends
        assert worker.stats.recorded == first_pass.recorded == stream.expected()["recorded"]
        assert worker.stats.dead_lettered == first_pass.dead_lettered
    finally:
        worker.close()
        worker.program.close()
    check_store(settings, stream)
    check_dead_letters(kafka_bootstrap, topics, stream, exactly_once=True)


# --------------------------------------------------------------------------- (b) crash safety


def _ingest_process(settings: Settings, group: str, topics: InboundTopics, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PRM_STORE": "postgres",
        "PRM_DATABASE_URL": settings.database_url or "",
        "PRM_DATABASE_SCHEMA": settings.database_schema or "",
        "PRM_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "PRM_LOG_FORMAT": "json",
        "PRM_LOG_LEVEL": "INFO",
    }
    prefix = topics.sales.removesuffix("prm.sales.v1")
    command = [sys.executable, "-m", "api.cli", "ingest", "--group", group, "--topic-prefix", prefix, "--batch", "200"]
    command += ["--instance-id", "ingest-0"]  # static membership: the restarted member needs no session timeout
    with log.open("ab") as out:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def test_sigkill_mid_stream_loses_nothing_and_records_nothing_twice(
    settings: Settings, topics: InboundTopics, kafka_bootstrap: str, tmp_path: Path
) -> None:
    onboard_partners(settings)
    stream = Generator(seed=99).build(2000, invalid_share=0.05, duplicate_share=0.05)
    produce(kafka_bootstrap, topics.sales, stream.messages)
    group = f"g-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "ingest.log"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    ends = end_offsets(kafka_bootstrap, topics.sales)

    watch = psycopg.connect(settings.database_url or "", autocommit=True)  # one connection for all the polling

    def handled() -> int:
        counts = inbox_counts(settings, watch)
        return sum(counts.values()) - counts.get("pending", 0)

    events_table = sql.Identifier(settings.database_schema or "", "partnerprogram_events")  # eventsourcing's table
    events = sql.SQL("SELECT count(*) FROM {}").format(events_table)
    before = watch.execute(events).fetchone()[0]  # the onboarding

    def mid_batch() -> bool:
        """At least 500 records handled, and 20 more in the store than the inbox says: the crash window
        "store written, inbox not completed" is open (each recorded message here writes exactly one event)."""
        counts = inbox_counts(settings, watch)
        stored = watch.execute(events).fetchone()[0] - before
        return sum(counts.values()) - counts.get("pending", 0) >= 500 and stored - counts.get("recorded", 0) >= 20

    def caught_up() -> bool:
        return committed_offsets(admin, group, topics.sales) == ends

    try:
        first = _ingest_process(settings, group, topics, log)
        try:
            wait_until(lambda: mid_batch() or first.poll() is not None, 120, "the first run to get going", 0.01)
            assert first.poll() is None, log.read_text()[-3000:]
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=30)
        finally:
            if first.poll() is None:
                first.kill()
        progress_at_kill = handled()
        assert not caught_up(), "killed mid-stream"
        assert progress_at_kill < len(stream.messages)

        second = _ingest_process(settings, group, topics, log)
        try:
            wait_until(lambda: caught_up() or second.poll() is not None, 300, "the restarted run to catch up", 0.1)
            assert second.poll() is None, log.read_text()[-3000:]
            second.send_signal(signal.SIGTERM)  # graceful: finishes its batch, exits 0
            assert second.wait(timeout=60) == 0, log.read_text()[-3000:]
        finally:
            if second.poll() is None:
                second.kill()
    finally:
        admin.close()
        watch.close()

    counts = inbox_counts(settings)
    new_id_duplicates = sum(1 for m in stream.messages if m.kind == "new_id_same_sale")
    rerun = counts.get("duplicate", 0) - new_id_duplicates
    print(  # noqa: T201
        f"\ncrash test: killed after {progress_at_kill} of {len(stream.messages)} handled;"
        f" {rerun} stored-but-not-completed messages re-run as (domain) duplicates"
    )
    assert rerun >= 1, "the kill left messages in the store that the inbox had not completed"
    check_store(settings, stream)
    check_dead_letters(kafka_bootstrap, topics, stream, exactly_once=False)
    assert counts.get("pending", 0) == 0
    assert counts["dead_lettered"] == len(stream.dead_letters())


# --------------------------------------------------------------------------- (c) scale-out


def test_two_members_share_the_partitions_across_a_rebalance(
    settings: Settings, topics: InboundTopics, kafka_bootstrap: str
) -> None:
    onboard_partners(settings)
    stream = Generator(seed=5).build(4000, invalid_share=0.05, duplicate_share=0.05)
    half = len(stream.messages) // 2
    # Same-id duplicates must come after their originals on the same partition: they share the key.
    produce(kafka_bootstrap, topics.sales, stream.messages[:half])
    group = f"g-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    workers: list[IngestConsumer] = []
    threads: list[threading.Thread] = []
    stop = threading.Event()

    def start() -> IngestConsumer:
        worker = build_ingest(settings, group=group, topics=topics, max_batch=100)
        thread = threading.Thread(target=worker.run_forever, args=(stop,), kwargs={"poll_timeout_ms": 200})
        thread.start()
        workers.append(worker)
        threads.append(thread)
        return worker

    try:
        first = start()
        wait_until(lambda: first.stats.handled >= 300, 120, "the first member to get going")
        second = start()  # mid-stream: the group rebalances
        wait_until(lambda: bool(second.assignments and second.assignments[-1]), 120, "the second member's partitions")
        produce(kafka_bootstrap, topics.sales, stream.messages[half:])
        ends = end_offsets(kafka_bootstrap, topics.sales)
        wait_until(lambda: committed_offsets(admin, group, topics.sales) == ends, 300, "the group to catch up", 0.1)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        for worker in workers:
            worker.close()
            worker.program.close()
        admin.close()

    assert not any(thread.is_alive() for thread in threads)
    first_now, second_now = first.assignments[-1], second.assignments[-1]
    assert first_now and second_now and not first_now & second_now, "both members own partitions, none shared"
    assert len(first_now | second_now) == PARTITIONS
    assert len(first.assignments) >= 2, "the first member went through a rebalance"
    expected = stream.expected()
    recorded = first.stats.recorded + second.stats.recorded
    duplicates = first.stats.duplicates + second.stats.duplicates
    assert recorded == expected["recorded"]
    assert duplicates == expected["duplicate"]
    assert first.stats.recorded > 0 and second.stats.recorded > 0, "both members did work"
    check_store(settings, stream)
    check_dead_letters(kafka_bootstrap, topics, stream, exactly_once=True)


# --------------------------------------------------------------------------- infrastructure failures


def test_infrastructure_failures_are_retried_never_skipped_nor_dead_lettered(
    settings: Settings, topics: InboundTopics, kafka_bootstrap: str
) -> None:
    """The store failing, a write conflict and the inbox connection killed by the server are retried; a message
    that keeps failing for an unforeseen reason is dead-lettered as ``processing_error`` instead of blocking."""
    onboard_partners(settings)
    stream = Generator(seed=11).build(300, invalid_share=0.0, duplicate_share=0.0)
    poison = next(m for m in stream.messages if m.kind == "sale")
    poison_id = orjson.loads(poison.value or b"")["data"]["sale_id"]
    poison.expect = "processing_error"
    stream.sales.discard(poison_id)
    stream.refunds -= {
        orjson.loads(m.value or b"")["data"]["refund_id"]
        for m in stream.messages
        if m.kind == "refund" and orjson.loads(m.value or b"")["data"]["sale_id"] == poison_id
    }
    for m in stream.messages:  # refunds of the poison sale find no sale
        if m.kind == "refund" and orjson.loads(m.value or b"")["data"]["sale_id"] == poison_id:
            m.expect = "unknown_sale"
    produce(kafka_bootstrap, topics.sales, stream.messages)

    worker = build_ingest(settings, group=f"g-{uuid.uuid4().hex[:8]}", topics=topics, max_batch=50)
    real_record_sale = worker.program.record_sale
    calls = Counter[str]()

    def flaky_record_sale(**kwargs: Any) -> Any:
        calls["all"] += 1
        if calls["all"] in (3, 4, 5):
            raise EsOperationalError("server closed the connection unexpectedly")
        if calls["all"] == 8:
            raise RecordConflictError("a concurrent write to the same aggregate")
        if kwargs["sale_id"] == poison_id:
            calls["poison"] += 1
            raise ZeroDivisionError("a bug met by one message")
        return real_record_sale(**kwargs)

    worker.program.record_sale = flaky_record_sale  # type: ignore[method-assign]
    try:
        worker.run_once(500)
        assert worker.inbox._conn is not None
        with psycopg.connect(settings.database_url or "", autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (worker.inbox._conn.info.backend_pid,))
        deadline = time.monotonic() + 120
        while worker.stats.handled < len(stream.messages):
            assert time.monotonic() < deadline
            worker.run_once(500)
        stats = worker.stats
    finally:
        worker.close()
        worker.program.close()
    assert calls["poison"] == 3, "retried, then dead-lettered"
    assert stats.retries >= 4 + 2 + 1  # the store (3), the conflict (1), the poison (2), the inbox (1)
    assert stats.recorded == stream.expected()["recorded"]
    assert dict(stats.dead_lettered) == {k: v for k, v in stream.expected().items() if k != "recorded"}
    check_store(settings, stream)
    check_dead_letters(kafka_bootstrap, topics, stream, exactly_once=True)
