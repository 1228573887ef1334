"""The publishing client and ``prm publish`` against the real broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

from consumers.publisher import InvalidEvent, SalesPublisher
from consumers.wire import (
    Customer,
    InboundTopics,
    OpportunityOpenedEvent,
    SaleLine,
    SaleRecordedEvent,
    SaleRefunded,
    SaleRefundedEvent,
    parse_inbound,
)

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
AT = datetime(2026, 3, 1, 9, 59, 41, tzinfo=UTC)
CUSTOMER = {"name": "Công ty TNHH Minh Phát", "domain": "minhphat.vn", "tax_id": "0101234567", "country": "VN"}
LINE = {"sku": "CRM-PRO-12M", "category": "software", "quantity": 3, "unit_price_minor": 12_000_000, "currency": "VND"}


@pytest.fixture
def topics(kafka_bootstrap: str) -> Iterator[InboundTopics]:
    names = InboundTopics.with_prefix(f"pub-{uuid.uuid4().hex[:10]}.")
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(names.sales, 3, 1)])
    admin.wait_for_topics([names.sales], timeout_ms=30_000)
    yield names
    admin.delete_topics([names.sales])
    admin.close()


@pytest.fixture
def publisher(kafka_bootstrap: str, topics: InboundTopics) -> Iterator[SalesPublisher]:
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", allow_auto_create_topics=False)
    yield SalesPublisher(producer, topics, source="erp/hanoi")
    producer.close()


def records(bootstrap: str, topic: str, expected: int, timeout_s: float = 30) -> list[Any]:
    """Every record of ``topic``, once it holds ``expected`` (bounded polling)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        deadline = time.monotonic() + timeout_s
        while sum(consumer.end_offsets(partitions).values()) < expected:
            assert time.monotonic() < deadline, f"fewer than {expected} records on {topic}"
            time.sleep(0.05)
        ends = consumer.end_offsets(partitions)
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        found: list[Any] = []
        while any(consumer.position(tp) < ends[tp] for tp in partitions):
            assert time.monotonic() < deadline, f"could not read {topic}"
            for batch in consumer.poll(timeout_ms=500).values():
                found.extend(batch)
        return found
    finally:
        consumer.close()


def test_typed_publishing_lands_on_the_topic(
    publisher: SalesPublisher, topics: InboundTopics, kafka_bootstrap: str
) -> None:
    sale = publisher.publish_sale(
        sale_id="S-2026-000123",
        partner_id="P-0042",
        registration_id="R-0007",
        customer=Customer(**CUSTOMER),
        lines=[SaleLine(**LINE), {**LINE, "sku": "SVC-SUPPORT-12M", "quantity": 1}],
        occurred_at=AT,
    )
    direct = publisher.publish_sale(
        sale_id="S-2026-000124", partner_id=None, customer=CUSTOMER, lines=[LINE], occurred_at=AT, event_id="my-id-1"
    )
    refund = publisher.publish_refund(
        SaleRefunded(
            sale_id="S-2026-000123",
            refund_id="RF-1",
            amount_minor=12_000_000,
            currency="VND",
            occurred_at=AT,
            reason="one seat returned",
        ),
        source="billing/hcm",
    )
    opportunity = publisher.publish_opportunity(
        opportunity_id="OPP-1",
        owner="hanh.vu@prm.vn",
        customer=CUSTOMER,
        estimated_value_minor=3_400_000,
        currency="USD",
        opened_at=AT,
    )
    assert direct.event_id == "my-id-1"
    assert uuid.UUID(sale.event_id).version == 4
    assert sale.topic == topics.sales and refund.partition == sale.partition, "a sale and its refunds share a key"

    found = {(r.partition, r.offset): r for r in records(kafka_bootstrap, topics.sales, 4)}
    assert len(found) == 4
    for published, cls, key in [
        (sale, SaleRecordedEvent, b"S-2026-000123"),
        (direct, SaleRecordedEvent, b"S-2026-000124"),
        (refund, SaleRefundedEvent, b"S-2026-000123"),
        (opportunity, OpportunityOpenedEvent, b"OPP-1"),
    ]:
        record = found[(published.partition, published.offset)]
        assert record.key == key
        assert dict(record.headers)["content-type"] == b"application/cloudevents+json"
        message = parse_inbound(record.value)
        assert isinstance(message, cls) and message.id == published.event_id
        assert message.time is not None and message.time.utcoffset() is not None
    sale_message = parse_inbound(found[(sale.partition, sale.offset)].value)
    assert isinstance(sale_message, SaleRecordedEvent) and len(sale_message.data.lines) == 2
    refund_message = parse_inbound(found[(refund.partition, refund.offset)].value)
    assert isinstance(refund_message, SaleRefundedEvent) and refund_message.source == "billing/hcm"
    direct_message = parse_inbound(found[(direct.partition, direct.offset)].value)
    assert isinstance(direct_message, SaleRecordedEvent) and direct_message.data.partner_id is None


@pytest.mark.parametrize(
    ("changes", "code", "mentions"),
    [
        ({"lines": [{**LINE, "unit_price_minor": 12_000_000.0}]}, "schema_violation", "lines[0].unit_price_minor"),
        ({"lines": [{**LINE, "quantity": "3"}]}, "schema_violation", "lines[0].quantity"),
        ({"occurred_at": datetime(2026, 3, 1, 9, 59, 41)}, "schema_violation", "occurred_at"),
        ({"lines": [LINE, {**LINE, "currency": "USD"}]}, "currency_mismatch", "USD, VND"),
        ({"lines": []}, "schema_violation", "lines"),
        ({"sale_id": None}, "schema_violation", "sale_id: Field required"),
    ],
)
def test_invalid_events_are_refused_locally_and_not_sent(
    publisher: SalesPublisher,
    topics: InboundTopics,
    kafka_bootstrap: str,
    changes: dict[str, Any],
    code: str,
    mentions: str,
) -> None:
    fields: dict[str, Any] = {
        "sale_id": "S-1",
        "partner_id": "P-0042",
        "customer": CUSTOMER,
        "lines": [LINE],
        "occurred_at": AT,
        **changes,
    }
    with pytest.raises(InvalidEvent) as caught:
        publisher.publish_sale(**fields)
    assert caught.value.code == code
    assert mentions in caught.value.detail
    with pytest.raises(InvalidEvent, match="source is required"):
        SalesPublisher(publisher.producer, topics).publish_sale(
            sale_id="S-1", customer=CUSTOMER, lines=[LINE], occurred_at=AT
        )
    with pytest.raises(InvalidEvent) as refund:
        publisher.publish_refund(sale_id="S-1", refund_id="RF-1", amount_minor=10.5, currency="VND", occurred_at=AT)
    assert refund.value.code == "schema_violation"
    with pytest.raises(TypeError, match="not both"):
        publisher.publish_refund(
            SaleRefunded(sale_id="S-1", refund_id="RF-1", amount_minor=1, currency="VND", occurred_at=AT), sale_id="S-2"
        )
    with pytest.raises(InvalidEvent) as raw:
        publisher.publish_raw_event({"specversion": "1.0", "id": "x", "source": "s", "type": "prm.sale.voided.v1"})
    assert raw.value.code == "unknown_type"
    publisher.producer.flush()
    assert records(kafka_bootstrap, topics.sales, 0) == [], "nothing was sent"


def test_publish_raw_event_sends_a_valid_cloudevent_as_it_is(
    publisher: SalesPublisher, topics: InboundTopics, kafka_bootstrap: str
) -> None:
    event = {
        "specversion": "1.0",
        "id": "raw-1",
        "source": "shop/web",
        "type": "prm.sale.recorded.v1",
        "time": "2026-03-01T10:00:02Z",
        "data": {"sale_id": "S-9", "customer": {"name": "Lan"}, "lines": [LINE], "occurred_at": "2026-03-01T10:00:00Z"},
    }
    published = publisher.publish_raw_event(event)
    [record] = records(kafka_bootstrap, topics.sales, 1)
    assert (record.partition, record.offset) == (published.partition, published.offset)
    assert json.loads(record.value) == event and record.key == b"S-9"


# --------------------------------------------------------------------------- prm publish


def _prm(*args: str, bootstrap: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PRM_KAFKA_BOOTSTRAP": bootstrap, "PRM_LOG_FORMAT": "json", "PRM_LOG_LEVEL": "WARNING"}
    return subprocess.run(
        [sys.executable, "-m", "api.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=180
    )


def _sample_lines(count: int) -> list[str]:
    from api.sample import generate, to_cloudevent

    events = [to_cloudevent(step) for step in generate(seed=3, scale=1) if step.kind == "inbound"][:count]
    return [json.dumps(event, ensure_ascii=False) for event in events]


def test_prm_publish_sends_good_lines_and_reports_bad_ones(
    tmp_path: Path, topics: InboundTopics, kafka_bootstrap: str
) -> None:
    good = _sample_lines(300)
    bad_float = json.loads(good[0])
    bad_float["id"] = "float-1"
    bad_float["data"]["lines"][0]["unit_price_minor"] = 1.5
    bad_naive = json.loads(good[1])
    bad_naive["id"] = "naive-1"
    bad_naive["data"]["occurred_at"] = "2026-01-01T00:00:00"
    bad = {
        5: ("{this is not json", "not_json"),
        50: (json.dumps({"hello": "world"}), "not_cloudevent"),
        100: (json.dumps({**json.loads(good[2]), "id": "t-1", "type": "prm.sale.voided.v1"}), "unknown_type"),
        150: (json.dumps(bad_float), "schema_violation"),
        200: (json.dumps(bad_naive), "schema_violation"),
    }
    lines: list[str] = []
    for line in good:
        while len(lines) + 1 in bad:
            lines.append(bad[len(lines) + 1][0])
        lines.append(line)
    lines.insert(10, "")  # a blank line is skipped, not rejected
    path = tmp_path / "sales.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    bad_by_line = {i + 1: line for i, line in enumerate(lines) if line and line not in good}

    prefix = topics.sales.removesuffix("prm.sales.v1")
    result = _prm("publish", str(path), "--topic-prefix", prefix, "--json", bootstrap=kafka_bootstrap)
    assert result.returncode == 1, result.stderr  # some lines were rejected
    report = json.loads(result.stdout)
    assert report["sent"] == len(good) and report["failed"] == 0 and report["blank"] == 1
    assert report["rejected"] == len(bad) == len(report["rejections"])
    assert {r["line"] for r in report["rejections"]} == set(bad_by_line)
    codes = {r["line"]: r["code"] for r in report["rejections"]}
    assert sorted(codes.values()) == sorted(code for _, code in bad.values())
    assert all(r["detail"] for r in report["rejections"])

    sent = records(kafka_bootstrap, topics.sales, len(good))
    assert len(sent) == len(good)
    assert sorted(r.value.decode() for r in sent) == sorted(good), "the good lines, byte for byte"
    assert all(dict(r.headers)["content-type"] == b"application/cloudevents+json" for r in sent)

    table = _prm("publish", str(path), "--topic-prefix", prefix, bootstrap=kafka_bootstrap)
    assert table.returncode == 1
    assert "rejected locally" in table.stdout and "not_json" in table.stdout


def test_prm_publish_all_good_exits_zero_and_a_missing_topic_is_one_line(
    tmp_path: Path, topics: InboundTopics, kafka_bootstrap: str
) -> None:
    path = tmp_path / "good.jsonl"
    path.write_text("\n".join(_sample_lines(20)) + "\n", encoding="utf-8")
    prefix = topics.sales.removesuffix("prm.sales.v1")
    ok = _prm("publish", str(path), "--topic-prefix", prefix, "--json", bootstrap=kafka_bootstrap)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["sent"] == 20
    missing = _prm("publish", str(path), "--topic-prefix", "no-such-prefix.", bootstrap=kafka_bootstrap)
    assert missing.returncode == 2
    assert "no-such-prefix.prm.sales.v1" in missing.stderr
