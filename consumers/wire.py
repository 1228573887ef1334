"""The inbound wire contract (spec: events.md, "Inbound"): CloudEvents 1.0 envelopes on ``prm.sales.v1``.

Internal services (ERP, e-commerce, billing, CRM) publish three event types in CloudEvents structured
JSON mode. This module holds their pydantic v2 models and :func:`parse_inbound`, which turns the raw bytes
of a Kafka record into either a validated :data:`InboundMessage` or a :class:`Rejection` with a stable
``code`` and a readable ``detail``. It never raises.

Strictness (the contract is shared by several producers, so it is checked exactly):

- integers must be JSON integers: no floats (``3.0``), no booleans, no numeric strings;
- instants must carry a timezone (a naive ``2026-03-01T10:00:00`` is refused);
- currencies are ISO 4217 codes; all lines of a sale share one currency (``currency_mismatch``);
- the ``data`` objects forbid unknown fields (a misspelt ``partnerId`` must not silently turn a partner
  sale into a direct one; new fields mean a new ``…v2`` type), while the envelope allows CloudEvents
  extension attributes.

Rejection codes: ``not_json``, ``not_cloudevent``, ``unknown_type``, ``schema_violation``,
``currency_mismatch`` here; the ingest consumer adds the domain's codes (``unknown_partner``,
``refund_exceeds_sale``, ``duplicate_with_different_data``, ``unknown_sale``, ``validation_failed``…)
and ``duplicate_message_id``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Final, Literal, Protocol

import orjson
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

__all__ = [
    "CONTENT_TYPE",
    "DATA_CONTENT_TYPE",
    "INBOUND_TYPES",
    "ISO_4217",
    "OPPORTUNITY_OPENED",
    "SALE_RECORDED",
    "SALE_REFUNDED",
    "CloudEvent",
    "Customer",
    "InboundMessage",
    "InboundTopicNames",
    "InboundTopics",
    "OpportunityOpened",
    "OpportunityOpenedEvent",
    "Rejection",
    "RejectionCode",
    "SaleLine",
    "SaleRecorded",
    "SaleRecordedEvent",
    "SaleRefunded",
    "SaleRefundedEvent",
    "fingerprint_of",
    "parse_inbound",
]

SALE_RECORDED: Final = "prm.sale.recorded.v1"
SALE_REFUNDED: Final = "prm.sale.refunded.v1"
OPPORTUNITY_OPENED: Final = "prm.opportunity.opened.v1"
INBOUND_TYPES: Final = (SALE_RECORDED, SALE_REFUNDED, OPPORTUNITY_OPENED)

CONTENT_TYPE: Final = "application/cloudevents+json"
"""Kafka ``content-type`` header of a structured-mode CloudEvent."""
DATA_CONTENT_TYPE: Final = "application/json"

SALES_TOPIC: Final = "prm.sales.v1"
DEADLETTER_TOPIC: Final = "prm.deadletter.v1"


class InboundTopicNames(Protocol):
    """What the consumer and the publisher need to know of the topic names (``InboundTopics`` or any
    object with these two attributes)."""

    @property
    def sales(self) -> str: ...

    @property
    def deadletter(self) -> str: ...


@dataclass(frozen=True)
class InboundTopics:
    """Names of the inbound topic and its dead-letter topic (default: the spec's names).

    ``with_prefix`` isolates a test run or an environment: ``InboundTopics.with_prefix("t1.")`` gives
    ``t1.prm.sales.v1`` and ``t1.prm.deadletter.v1``.
    """

    sales: str = SALES_TOPIC
    deadletter: str = DEADLETTER_TOPIC

    @classmethod
    def with_prefix(cls, prefix: str) -> InboundTopics:
        return cls(sales=f"{prefix}{SALES_TOPIC}", deadletter=f"{prefix}{DEADLETTER_TOPIC}")


# ISO 4217 codes: the current list plus recently withdrawn ones (old sales may still carry them);
# XTS (testing) and XXX (no currency) are left out on purpose.
ISO_4217: Final[frozenset[str]] = frozenset(
    {
        "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT", "BGN", "BHD",
        "BIF", "BMD", "BND", "BOB", "BOV", "BRL", "BSD", "BTN", "BWP", "BYN", "BYR", "BZD", "CAD", "CDF", "CHE",
        "CHF", "CHW", "CLF", "CLP", "CNY", "COP", "COU", "CRC", "CUC", "CUP", "CVE", "CZK", "DJF", "DKK", "DOP",
        "DZD", "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GNF", "GTQ", "GYD",
        "HKD", "HNL", "HRK", "HTG", "HUF", "IDR", "ILS", "INR", "IQD", "IRR", "ISK", "JMD", "JOD", "JPY", "KES",
        "KGS", "KHR", "KMF", "KPW", "KRW", "KWD", "KYD", "KZT", "LAK", "LBP", "LKR", "LRD", "LSL", "LYD", "MAD",
        "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRO", "MRU", "MUR", "MVR", "MWK", "MXN", "MXV", "MYR", "MZN",
        "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "OMR", "PAB", "PEN", "PGK", "PHP", "PKR", "PLN", "PYG", "QAR",
        "RON", "RSD", "RUB", "RWF", "SAR", "SBD", "SCR", "SDG", "SEK", "SGD", "SHP", "SLE", "SLL", "SOS", "SRD",
        "SSP", "STD", "STN", "SVC", "SYP", "SZL", "THB", "TJS", "TMT", "TND", "TOP", "TRY", "TTD", "TWD", "TZS",
        "UAH", "UGX", "USD", "USN", "UYI", "UYU", "UYW", "UZS", "VED", "VEF", "VES", "VND", "VUV", "WST", "XAF",
        "XAG", "XAU", "XBA", "XBB", "XBC", "XBD", "XCD", "XCG", "XDR", "XOF", "XPD", "XPF", "XPT", "XSU", "XUA",
        "YER", "ZAR", "ZMW", "ZWG", "ZWL",
    }
)  # fmt: skip


def _text(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError("blank", "must not be blank")
    return _no_nul(value)


def _no_nul(value: str) -> str:
    if "\x00" in value:  # PostgreSQL text cannot hold NUL
        raise PydanticCustomError("nul_character", "must not contain the NUL character")
    return value


# Text: at least one non-blank character, bounded, and no NUL.
Text = Annotated[str, StringConstraints(min_length=1, max_length=500), AfterValidator(_text)]
LongText = Annotated[str, StringConstraints(max_length=4000), AfterValidator(_no_nul)]
CountryCode = Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")]
INT64_MAX: Final = 2**63 - 1  # integers must fit the signed 64 bits every consumer's language has
PositiveInt = Annotated[int, Field(strict=True, gt=0, le=INT64_MAX)]
NonNegativeInt = Annotated[int, Field(strict=True, ge=0, le=INT64_MAX)]


def _iso_4217(code: str) -> str:
    if code not in ISO_4217:
        raise PydanticCustomError(
            "currency_code", "'{code}' is not an ISO 4217 currency code (such as VND or USD)", {"code": code}
        )
    return code


Currency = Annotated[str, AfterValidator(_iso_4217)]


class _Data(BaseModel):
    """Base of the ``data`` models: strict types, unknown fields refused, immutable."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class Customer(_Data):
    name: Text
    domain: Text | None = None
    tax_id: Text | None = None
    country: CountryCode | None = None


class SaleLine(_Data):
    sku: Text
    category: Text | None = None
    quantity: PositiveInt
    unit_price_minor: NonNegativeInt
    currency: Currency


class SaleRecorded(_Data):
    """``data`` of ``prm.sale.recorded.v1``. ``partner_id`` null or absent: a direct sale."""

    sale_id: Text
    partner_id: Text | None = None
    registration_id: Text | None = None
    customer: Customer
    lines: Annotated[list[SaleLine], Field(min_length=1, max_length=1000)]
    occurred_at: AwareDatetime

    @model_validator(mode="after")
    def _one_currency(self) -> SaleRecorded:
        currencies = sorted({line.currency for line in self.lines})
        if len(currencies) > 1:
            raise PydanticCustomError(
                "currency_mismatch",
                "all lines of a sale must share one currency, got {currencies}",
                {"currencies": ", ".join(currencies)},
            )
        return self

    @property
    def currency(self) -> str:
        return self.lines[0].currency


class SaleRefunded(_Data):
    """``data`` of ``prm.sale.refunded.v1``."""

    sale_id: Text
    refund_id: Text
    amount_minor: PositiveInt
    currency: Currency
    occurred_at: AwareDatetime
    reason: LongText | None = None


class OpportunityOpened(_Data):
    """``data`` of ``prm.opportunity.opened.v1`` (the CRM: our own direct sales team)."""

    opportunity_id: Text
    owner: Text
    customer: Customer
    estimated_value_minor: NonNegativeInt
    currency: Currency
    opened_at: AwareDatetime


class CloudEvent(BaseModel):
    """The CloudEvents 1.0 envelope (structured JSON mode). Extension attributes are allowed."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    specversion: Literal["1.0"]
    id: Text
    source: Text
    type: Text
    time: AwareDatetime | None = None
    subject: Text | None = None
    datacontenttype: str | None = None

    @field_validator("datacontenttype")
    @classmethod
    def _json_data(cls, value: str | None) -> str | None:
        if value is not None and value.split(";", 1)[0].strip().lower() != DATA_CONTENT_TYPE:
            raise PydanticCustomError(
                "datacontenttype",
                "data must be JSON (datacontenttype '{ct}', expected application/json)",
                {"ct": value},
            )
        return value


class SaleRecordedEvent(CloudEvent):
    type: Literal["prm.sale.recorded.v1"]
    data: SaleRecorded

    @property
    def key(self) -> str:
        return self.data.sale_id


class SaleRefundedEvent(CloudEvent):
    type: Literal["prm.sale.refunded.v1"]
    data: SaleRefunded

    @property
    def key(self) -> str:
        return self.data.sale_id


class OpportunityOpenedEvent(CloudEvent):
    type: Literal["prm.opportunity.opened.v1"]
    data: OpportunityOpened

    @property
    def key(self) -> str:
        return self.data.opportunity_id


InboundMessage = SaleRecordedEvent | SaleRefundedEvent | OpportunityOpenedEvent
"""A validated inbound event: its ``type`` says which; ``key`` is the Kafka key it belongs under."""

_INBOUND: TypeAdapter[InboundMessage] = TypeAdapter(Annotated[InboundMessage, Field(discriminator="type")])

RejectionCode = str


@dataclass(frozen=True)
class Rejection:
    """Why a message cannot be ingested. ``code`` is stable (it becomes the ``prm-error-code`` header).

    ``message_id``/``event_type`` are filled when the envelope got far enough to tell them;
    ``fingerprint`` then identifies the content, for duplicate-id detection.
    """

    code: RejectionCode
    detail: str
    message_id: str | None = None
    event_type: str | None = None
    fingerprint: str | None = None


def fingerprint_of(message: InboundMessage) -> str:
    """A digest of what a message says (its type and data), ignoring envelope details such as ``time``.

    Two deliveries with one CloudEvents id and equal fingerprints carry the same facts.
    """
    digest = hashlib.sha256(message.type.encode())
    digest.update(b"\n")
    digest.update(message.data.model_dump_json().encode())
    return digest.hexdigest()


def _raw_fingerprint(event_type: str, data: object) -> str:
    digest = hashlib.sha256(event_type.encode())
    digest.update(b"\n")
    try:
        digest.update(orjson.dumps(data, option=orjson.OPT_SORT_KEYS))
    except TypeError:  # e.g. integers beyond 64 bits
        digest.update(repr(data).encode())
    return digest.hexdigest()


_MAX_ERRORS = 5
_MAX_DETAIL = 900


def _path(loc: tuple[int | str, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text or "(message)"


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def summarise(errors: Sequence[ErrorDetails], *, strip_tag: bool = False) -> str:
    """``data.lines[0].quantity: Input should be a valid integer (got number); …`` (input values left out:
    they may carry customer data)."""
    parts = []
    for error in errors[:_MAX_ERRORS]:
        loc = tuple(error.get("loc", ()))
        if strip_tag and loc and isinstance(loc[0], str) and loc[0] in INBOUND_TYPES:
            loc = loc[1:]
        text = f"{_path(loc)}: {error.get('msg', 'invalid')}"
        if error.get("type", "").endswith("_type") and "input" in error:
            text += f" (got {_json_kind(error['input'])})"
        parts.append(text)
    if len(errors) > _MAX_ERRORS:
        parts.append(f"(+{len(errors) - _MAX_ERRORS} more)")
    detail = "; ".join(parts)
    return detail if len(detail) <= _MAX_DETAIL else detail[: _MAX_DETAIL - 1] + "…"


def parse_inbound(raw: bytes | None) -> InboundMessage | Rejection:
    """Validate the raw bytes of one inbound record. Never raises.

    Fast path: one ``validate_json`` over the bytes against the three event models (discriminated by
    ``type``). Only a failure takes the slow path that works out the most useful rejection code.
    """
    if not raw:
        return Rejection("not_json", "empty message (no value)")
    try:
        return _INBOUND.validate_json(raw)
    except ValidationError as exc:
        return _classify(raw, exc)
    except Exception as exc:  # pragma: no cover - pydantic should only raise ValidationError
        detail = f"unexpected validation failure: {type(exc).__name__}: {exc}"
        return Rejection("schema_violation", detail[:_MAX_DETAIL])


def _classify(raw: bytes, failure: ValidationError) -> Rejection:
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Rejection("not_json", f"not JSON: {exc}"[:_MAX_DETAIL])
    if not isinstance(document, dict):
        return Rejection("not_cloudevent", f"a CloudEvent is a JSON object, got {_json_kind(document)}")
    message_id = document.get("id") if isinstance(document.get("id"), str) else None
    event_type = document.get("type") if isinstance(document.get("type"), str) else None
    try:
        CloudEvent.model_validate_json(raw)
    except ValidationError as exc:
        envelope_errors = [e for e in exc.errors() if e.get("loc", ("",))[0] != "data"]
        return Rejection(
            "not_cloudevent",
            "not a CloudEvents 1.0 envelope: " + summarise(envelope_errors or exc.errors()),
        )
    assert message_id is not None and event_type is not None  # the envelope is valid
    fingerprint = _raw_fingerprint(event_type, document.get("data"))
    if event_type not in INBOUND_TYPES:
        return Rejection(
            "unknown_type",
            f"unknown event type {event_type!r} (expected one of {', '.join(INBOUND_TYPES)})",
            message_id=message_id,
            event_type=event_type,
            fingerprint=fingerprint,
        )
    errors = failure.errors()
    code = "currency_mismatch" if errors and all(e["type"] == "currency_mismatch" for e in errors) else None
    return Rejection(
        code or "schema_violation",
        f"{event_type}: " + summarise(errors, strip_tag=True),
        message_id=message_id,
        event_type=event_type,
        fingerprint=fingerprint,
    )
