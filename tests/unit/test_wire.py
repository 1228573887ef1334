"""The inbound wire contract: what parses, and the stable rejection code of what does not."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from consumers.wire import (
    InboundTopics,
    OpportunityOpenedEvent,
    Rejection,
    SaleRecordedEvent,
    SaleRefundedEvent,
    fingerprint_of,
    parse_inbound,
)

SALE: dict[str, Any] = {
    "specversion": "1.0",
    "id": "3f1c1d0e-6f55-4a8e-9a43-0b8f8f6f2c11",
    "source": "erp/hanoi",
    "type": "prm.sale.recorded.v1",
    "time": "2026-03-01T10:00:02Z",
    "subject": "S-2026-000123",
    "datacontenttype": "application/json",
    "data": {
        "sale_id": "S-2026-000123",
        "partner_id": "P-0042",
        "registration_id": "R-0007",
        "customer": {
            "name": "Công ty TNHH Minh Phát",
            "domain": "minhphat.vn",
            "tax_id": "0101234567",
            "country": "VN",
        },
        "lines": [
            {
                "sku": "CRM-PRO-12M",
                "category": "software",
                "quantity": 3,
                "unit_price_minor": 12000000,
                "currency": "VND",
            }
        ],
        "occurred_at": "2026-03-01T09:59:41Z",
    },
}
REFUND: dict[str, Any] = {
    **{k: v for k, v in SALE.items() if k != "data"},
    "id": "a6f119c0-f796-578b-8d38-777d360145b9",
    "type": "prm.sale.refunded.v1",
    "data": {
        "sale_id": "S-2026-000123",
        "refund_id": "RF-1",
        "amount_minor": 12000000,
        "currency": "VND",
        "occurred_at": "2026-03-05T08:00:00+07:00",
        "reason": "one seat returned",
    },
}
OPPORTUNITY: dict[str, Any] = {
    **{k: v for k, v in SALE.items() if k != "data"},
    "id": "a472ee92-1c04-5b36-8acf-f5b425d396af",
    "source": "crm/salesforce",
    "type": "prm.opportunity.opened.v1",
    "subject": "OPP-1",
    "data": {
        "opportunity_id": "OPP-1",
        "owner": "hanh.vu@prm.vn",
        "customer": {"name": "Minh Phát", "domain": None, "tax_id": None, "country": "VN"},
        "estimated_value_minor": 3400000,
        "currency": "USD",
        "opened_at": "2026-01-14T06:11:24Z",
    },
}


def raw(document: Any) -> bytes:
    return json.dumps(document, ensure_ascii=False).encode()


def changed(document: dict[str, Any], path: str, value: Any) -> bytes:
    """``document`` with the value at a dotted path (``data.lines.0.quantity``) replaced (or deleted: ...)."""
    result = copy.deepcopy(document)
    *parents, last = path.split(".")
    node: Any = result
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    key: Any = int(last) if isinstance(node, list) else last
    if value is ...:
        del node[key]
    else:
        node[key] = value
    return raw(result)


def rejected(data: bytes | None) -> Rejection:
    result = parse_inbound(data)
    assert isinstance(result, Rejection), result
    assert result.detail
    return result


# --------------------------------------------------------------------------- valid


def test_the_spec_example_parses() -> None:
    message = parse_inbound(raw(SALE))
    assert isinstance(message, SaleRecordedEvent)
    assert message.id == SALE["id"] and message.source == "erp/hanoi" and message.key == "S-2026-000123"
    assert message.data.partner_id == "P-0042"
    assert message.data.lines[0].quantity == 3 and message.data.currency == "VND"
    assert message.data.occurred_at == datetime(2026, 3, 1, 9, 59, 41, tzinfo=UTC)


def test_refund_and_opportunity_parse() -> None:
    refund = parse_inbound(raw(REFUND))
    assert isinstance(refund, SaleRefundedEvent) and refund.key == "S-2026-000123"
    assert refund.data.occurred_at.utcoffset() is not None
    opportunity = parse_inbound(raw(OPPORTUNITY))
    assert isinstance(opportunity, OpportunityOpenedEvent) and opportunity.key == "OPP-1"


def test_a_direct_sale_has_no_partner() -> None:
    for document in (changed(SALE, "data.partner_id", None), changed(SALE, "data.partner_id", ...)):
        message = parse_inbound(document)
        assert isinstance(message, SaleRecordedEvent) and message.data.partner_id is None


def test_optional_envelope_attributes_and_extensions() -> None:
    minimal = {k: v for k, v in SALE.items() if k not in ("time", "subject", "datacontenttype")}
    assert isinstance(parse_inbound(raw(minimal)), SaleRecordedEvent)
    extended = {**SALE, "traceparent": "00-abc-def-01", "partitionkey": "S-1"}
    message = parse_inbound(raw(extended))
    assert isinstance(message, SaleRecordedEvent) and message.model_extra == {
        "traceparent": "00-abc-def-01",
        "partitionkey": "S-1",
    }
    assert isinstance(
        parse_inbound(changed(SALE, "datacontenttype", "application/json; charset=utf-8")), SaleRecordedEvent
    )


def test_every_sample_event_parses() -> None:
    from api.sample import generate, to_cloudevent

    events = [to_cloudevent(step) for step in generate(seed=42, scale=1) if step.kind == "inbound"]
    assert events
    for event in events:
        assert not isinstance(parse_inbound(raw(event)), Rejection), event


def test_the_fingerprint_ignores_the_envelope_but_not_the_data() -> None:
    first = parse_inbound(raw(SALE))
    later = parse_inbound(raw({**SALE, "id": "other", "time": "2026-03-02T00:00:00Z"}))
    other = parse_inbound(changed(SALE, "data.lines.0.quantity", 4))
    assert not isinstance(first, Rejection) and not isinstance(later, Rejection) and not isinstance(other, Rejection)
    assert fingerprint_of(first) == fingerprint_of(later) != fingerprint_of(other)


# --------------------------------------------------------------------------- rejections


@pytest.mark.parametrize(
    "data",
    [b"", None, b"{", b"sale S-1 recorded", b"\xff\xfe{}", b'{"id": "1",}', b"\x00"],
    ids=["empty", "tombstone", "truncated", "text", "not-utf8", "trailing-comma", "nul"],
)
def test_not_json(data: bytes | None) -> None:
    assert rejected(data).code == "not_json"


@pytest.mark.parametrize(
    "data",
    [
        raw([SALE]),
        b'"a string"',
        b"42",
        b"null",
        raw({"hello": "world"}),
        changed(SALE, "specversion", ...),
        changed(SALE, "specversion", "0.3"),
        changed(SALE, "specversion", 1.0),
        changed(SALE, "id", ...),
        changed(SALE, "id", ""),
        changed(SALE, "id", 42),
        changed(SALE, "id", "abc\u0000"),
        changed(SALE, "source", ""),
        changed(SALE, "type", ...),
        changed(SALE, "time", "2026-03-01T10:00:02"),
        changed(SALE, "time", "yesterday"),
        changed(SALE, "datacontenttype", "application/xml"),
    ],
    ids=[
        "array",
        "string",
        "number",
        "null",
        "object",
        "no-specversion",
        "old-specversion",
        "numeric-specversion",
        "no-id",
        "empty-id",
        "numeric-id",
        "nul-in-id",
        "empty-source",
        "no-type",
        "naive-time",
        "bad-time",
        "xml-data",
    ],
)
def test_not_cloudevent(data: bytes) -> None:
    rejection = rejected(data)
    assert rejection.code == "not_cloudevent", rejection
    assert rejection.message_id is None, "no id is trusted from a broken envelope"


@pytest.mark.parametrize("event_type", ["prm.sale.cancelled.v1", "prm.sale.recorded.v2", "com.example.other"])
def test_unknown_type(event_type: str) -> None:
    rejection = rejected(changed(SALE, "type", event_type))
    assert rejection.code == "unknown_type"
    assert rejection.message_id == SALE["id"] and rejection.event_type == event_type
    assert event_type in rejection.detail


@pytest.mark.parametrize(
    ("path", "value", "where"),
    [
        ("data.lines.0.unit_price_minor", 12000000.0, "data.lines[0].unit_price_minor"),
        ("data.lines.0.unit_price_minor", 1.5, "data.lines[0].unit_price_minor"),
        ("data.lines.0.unit_price_minor", "12000000", "data.lines[0].unit_price_minor"),
        ("data.lines.0.unit_price_minor", -1, "data.lines[0].unit_price_minor"),
        ("data.lines.0.quantity", 3.0, "data.lines[0].quantity"),
        ("data.lines.0.quantity", "3", "data.lines[0].quantity"),
        ("data.lines.0.quantity", True, "data.lines[0].quantity"),
        ("data.lines.0.quantity", 0, "data.lines[0].quantity"),
        ("data.lines.0.currency", "vnd", "data.lines[0].currency"),
        ("data.lines.0.currency", "XYZ", "data.lines[0].currency"),
        ("data.lines", [], "data.lines"),
        ("data.occurred_at", "2026-03-01T09:59:41", "data.occurred_at"),
        ("data.occurred_at", "2026-03-01", "data.occurred_at"),
        ("data.occurred_at", 1772359181, "data.occurred_at"),
        ("data.sale_id", ..., "data.sale_id"),
        ("data.sale_id", "   ", "data.sale_id"),
        ("data.partner_id", "", "data.partner_id"),
        ("data.customer", ..., "data.customer"),
        ("data.customer.name", ..., "data.customer.name"),
        ("data.customer.country", "Vietnam", "data.customer.country"),
        ("data.partnerId", "P-0042", "data.partnerId"),
        ("data", None, "data"),
        ("data", ..., "data"),
    ],
)
def test_schema_violation_names_the_field(path: str, value: Any, where: str) -> None:
    rejection = rejected(changed(SALE, path, value))
    assert rejection.code == "schema_violation", rejection
    assert f"{where}:" in rejection.detail, rejection.detail
    assert rejection.message_id == SALE["id"] and rejection.fingerprint


@pytest.mark.parametrize(
    ("document", "path", "value"),
    [
        (REFUND, "data.amount_minor", 1200.0),
        (REFUND, "data.amount_minor", "1200"),
        (REFUND, "data.amount_minor", 0),
        (REFUND, "data.amount_minor", False),
        (REFUND, "data.occurred_at", "2026-03-05T08:00:00"),
        (REFUND, "data.refund_id", ...),
        (OPPORTUNITY, "data.estimated_value_minor", 3400000.0),
        (OPPORTUNITY, "data.estimated_value_minor", "3400000"),
        (OPPORTUNITY, "data.opened_at", "2026-01-14T06:11:24"),
        (OPPORTUNITY, "data.owner", ""),
    ],
)
def test_refund_and_opportunity_schema_violations(document: dict[str, Any], path: str, value: Any) -> None:
    assert rejected(changed(document, path, value)).code == "schema_violation"


def test_money_is_refused_as_float_or_string_and_the_detail_says_what_came() -> None:
    detail = rejected(changed(SALE, "data.lines.0.unit_price_minor", 1.5)).detail
    assert "valid integer" in detail and "(got number)" in detail
    assert "(got string)" in rejected(changed(SALE, "data.lines.0.unit_price_minor", "7")).detail


def test_mixed_currencies_are_a_currency_mismatch() -> None:
    document = copy.deepcopy(SALE)
    document["data"]["lines"].append({**document["data"]["lines"][0], "sku": "SVC-1", "currency": "USD"})
    rejection = rejected(raw(document))
    assert rejection.code == "currency_mismatch"
    assert "USD, VND" in rejection.detail


def test_several_problems_are_summarised_without_customer_data() -> None:
    document = copy.deepcopy(SALE)
    document["data"]["lines"] = [{**document["data"]["lines"][0], "quantity": 1.5}] * 8
    rejection = rejected(raw(document))
    assert rejection.code == "schema_violation"
    assert "(+3 more)" in rejection.detail
    assert "Minh Phát" not in rejection.detail


def test_parse_inbound_never_raises_on_arbitrary_bytes() -> None:
    samples = [bytes([i]) * n for i in range(0, 256, 17) for n in (1, 3)]
    samples += [b"1e400", b"[" * 10_000, b'{"a":' * 5_000, orjson.dumps({"specversion": "1.0", "id": "x" * 10_000})]
    samples += [raw({**SALE, "data": {**SALE["data"], "lines": [{**SALE["data"]["lines"][0], "quantity": 10**40}]}})]
    for sample in samples:
        assert isinstance(parse_inbound(sample), Rejection)


def test_topic_names_take_a_prefix() -> None:
    assert InboundTopics() == InboundTopics("prm.sales.v1", "prm.deadletter.v1")
    assert InboundTopics.with_prefix("t1.") == InboundTopics("t1.prm.sales.v1", "t1.prm.deadletter.v1")
