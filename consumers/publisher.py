"""A small typed client for internal services that publish sales, refunds and opportunities.

Every event is validated BEFORE it is sent, exactly as the ingest consumer will validate it: the envelope
is serialised to the bytes that go on the wire and those bytes go through
:func:`consumers.wire.parse_inbound`. A problem raises :class:`InvalidEvent` (with the same stable code the
consumer would put on a dead letter) and nothing is sent. Domain checks that need the event store
(unknown partner, refund above the sale) can only happen at ingestion.

    publisher = SalesPublisher(producer, InboundTopics(), source="erp/hanoi")
    sent = publisher.publish_sale(sale_id="S-2026-000123", partner_id="P-0042", customer={...}, lines=[...],
                                  occurred_at=datetime(2026, 3, 1, 9, 59, 41, tzinfo=UTC))
    sent.event_id, sent.topic, sent.partition, sent.offset

The Kafka key is the sale id (refunds too, so a sale and its refunds stay in order in one partition) or the
opportunity id; the ``content-type`` header is ``application/cloudevents+json``.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from kafka import KafkaProducer
from pydantic import BaseModel

from consumers.wire import (
    CONTENT_TYPE,
    DATA_CONTENT_TYPE,
    OPPORTUNITY_OPENED,
    SALE_RECORDED,
    SALE_REFUNDED,
    Customer,
    InboundTopicNames,
    InboundTopics,
    OpportunityOpened,
    Rejection,
    SaleLine,
    SaleRecorded,
    SaleRefunded,
    parse_inbound,
)

__all__ = ["InvalidEvent", "PendingPublish", "PublishFailed", "Published", "SalesPublisher"]


class InvalidEvent(ValueError):
    """The event breaks the wire contract; it was not sent. ``code`` is the consumer's rejection code."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class PublishFailed(RuntimeError):
    """The broker did not acknowledge the event (it may or may not have been written)."""


@dataclass(frozen=True)
class Published:
    """Where an event landed: its CloudEvents id and its Kafka coordinates."""

    event_id: str
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class PendingPublish:
    """An event handed to the producer; ``result()`` waits for the broker's acknowledgement."""

    event_id: str
    future: Any

    def result(self, timeout_s: float = 30.0) -> Published:
        try:
            metadata = self.future.get(timeout=timeout_s)
        except Exception as exc:
            raise PublishFailed(f"event {self.event_id} was not acknowledged: {type(exc).__name__}: {exc}") from exc
        return Published(self.event_id, str(metadata.topic), int(metadata.partition), int(metadata.offset))


Jsonable = Mapping[str, Any] | BaseModel


def _plain(value: Any) -> Any:
    """Pydantic models to JSON-ready dicts; mappings and sequences walked; the rest left to orjson."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _without_missing(fields: Mapping[str, Any], optional: Sequence[str] = ()) -> dict[str, Any]:
    """Leave out required fields not given (so validation says "Field required"), keep explicit optionals."""
    return {k: _plain(v) for k, v in fields.items() if v is not None or k in optional}


class SalesPublisher:
    """Publishes inbound events to ``topics.sales`` with ``producer`` (a ``KafkaProducer``, ``acks='all'``)."""

    def __init__(
        self,
        producer: KafkaProducer,
        topics: InboundTopicNames | None = None,
        *,
        source: str | None = None,
        ack_timeout_s: float = 30.0,
    ) -> None:
        self.producer = producer
        self.topics = topics or InboundTopics()
        self.source = source
        self.ack_timeout_s = ack_timeout_s

    # ---- typed ------------------------------------------------------------------------------------
    def publish_sale(
        self,
        sale: SaleRecorded | None = None,
        /,
        *,
        sale_id: str | None = None,
        partner_id: str | None = None,
        registration_id: str | None = None,
        customer: Customer | Mapping[str, Any] | None = None,
        lines: Sequence[SaleLine | Mapping[str, Any]] | None = None,
        occurred_at: datetime | None = None,
        event_id: str | None = None,
        source: str | None = None,
    ) -> Published:
        """Publish ``prm.sale.recorded.v1``: give a :class:`SaleRecorded`, or its fields as arguments.

        ``partner_id=None`` is a direct sale by our own team.
        """
        fields = {
            "sale_id": sale_id,
            "partner_id": partner_id,
            "registration_id": registration_id,
            "customer": customer,
            "lines": list(lines) if lines is not None else None,
            "occurred_at": occurred_at,
        }
        data = self._data(sale, fields, optional=("partner_id", "registration_id"))
        return self._publish(SALE_RECORDED, data, data.get("sale_id"), event_id, source)

    def publish_refund(
        self,
        refund: SaleRefunded | None = None,
        /,
        *,
        sale_id: str | None = None,
        refund_id: str | None = None,
        amount_minor: int | None = None,
        currency: str | None = None,
        occurred_at: datetime | None = None,
        reason: str | None = None,
        event_id: str | None = None,
        source: str | None = None,
    ) -> Published:
        """Publish ``prm.sale.refunded.v1``: give a :class:`SaleRefunded`, or its fields as arguments."""
        fields = {
            "sale_id": sale_id,
            "refund_id": refund_id,
            "amount_minor": amount_minor,
            "currency": currency,
            "occurred_at": occurred_at,
            "reason": reason,
        }
        data = self._data(refund, fields, optional=("reason",))
        return self._publish(SALE_REFUNDED, data, data.get("sale_id"), event_id, source)

    def publish_opportunity(
        self,
        opportunity: OpportunityOpened | None = None,
        /,
        *,
        opportunity_id: str | None = None,
        owner: str | None = None,
        customer: Customer | Mapping[str, Any] | None = None,
        estimated_value_minor: int | None = None,
        currency: str | None = None,
        opened_at: datetime | None = None,
        event_id: str | None = None,
        source: str | None = None,
    ) -> Published:
        """Publish ``prm.opportunity.opened.v1``: give an :class:`OpportunityOpened`, or its fields."""
        fields = {
            "opportunity_id": opportunity_id,
            "owner": owner,
            "customer": customer,
            "estimated_value_minor": estimated_value_minor,
            "currency": currency,
            "opened_at": opened_at,
        }
        data = self._data(opportunity, fields)
        return self._publish(OPPORTUNITY_OPENED, data, data.get("opportunity_id"), event_id, source)

    # ---- raw --------------------------------------------------------------------------------------
    def publish_raw_event(self, event: Mapping[str, Any]) -> Published:
        """Publish a complete CloudEvent given as a dict (e.g. one line of a JSON Lines file), as it is."""
        return self.submit_raw_event(event).result(self.ack_timeout_s)

    def submit_raw_event(self, event: Mapping[str, Any]) -> PendingPublish:
        """Validate and hand a complete CloudEvent to the producer without waiting for the ack."""
        try:
            raw = orjson.dumps(_plain(event))
        except TypeError as exc:
            raise InvalidEvent("not_json", f"cannot be serialised to JSON: {exc}") from None
        return self.submit_raw(raw)

    def submit_raw(self, raw: bytes) -> PendingPublish:
        """Validate the bytes of a CloudEvent and hand them, unchanged, to the producer."""
        parsed = parse_inbound(raw)
        if isinstance(parsed, Rejection):
            raise InvalidEvent(parsed.code, parsed.detail)
        future = self.producer.send(
            self.topics.sales,
            value=raw,
            key=parsed.key.encode(),
            headers=[("content-type", CONTENT_TYPE.encode())],
        )
        return PendingPublish(parsed.id, future)

    # ---- plumbing -----------------------------------------------------------------------------------
    def _data(self, model: BaseModel | None, fields: Mapping[str, Any], optional: Sequence[str] = ()) -> dict[str, Any]:
        if model is not None:
            given = [name for name, value in fields.items() if value is not None]
            if given:
                raise TypeError(f"give either a {type(model).__name__} or its fields, not both ({', '.join(given)})")
            return dict(model.model_dump(mode="json"))
        return _without_missing(fields, optional)

    def _publish(
        self, event_type: str, data: dict[str, Any], subject: Any, event_id: str | None, source: str | None
    ) -> Published:
        source = source or self.source
        if not source:
            raise InvalidEvent("not_cloudevent", "source is required: name the publishing service, e.g. erp/hanoi")
        envelope: dict[str, Any] = {
            "specversion": "1.0",
            "id": event_id or str(uuid.uuid4()),
            "source": source,
            "type": event_type,
            "time": datetime.now(tz=UTC),
            "datacontenttype": DATA_CONTENT_TYPE,
            "data": data,
        }
        if isinstance(subject, str):
            envelope["subject"] = subject
        try:
            raw = orjson.dumps(envelope, option=orjson.OPT_UTC_Z)
        except TypeError as exc:
            raise InvalidEvent("schema_violation", f"cannot be serialised to JSON: {exc}") from None
        return self.submit_raw(raw).result(self.ack_timeout_s)
