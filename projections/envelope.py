"""The one shape every projection reads: a recorded domain event as a CloudEvents 1.0 envelope.

The relay publishes exactly this on Kafka, the embedded mode builds it from the
event store, and replays read it back from either: so the projections see the
same input whichever path the events took.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any
from uuid import UUID

import orjson

from domain.base import stable_event_id, wire_type, wire_type_of
from domain.ids import event_id

SPECVERSION = "1.0"
EVENT_SOURCE = "prm/event-store"
CONTENT_TYPE = "application/cloudevents+json"
_BASE_FIELDS = {"originator_id", "originator_version", "timestamp", "originator_topic", "subject"}


def iso(value: datetime) -> str:
    """UTC instant as ISO 8601 with a ``Z`` suffix."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError(f"time {text!r} has no timezone")
    return value.astimezone(UTC)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


@dataclass(frozen=True)
class EventEnvelope:
    """A recorded event: ``sequence`` is its event-store position (total order)."""

    id: str
    type: str
    subject: str
    sequence: int
    aggregate_id: str
    aggregate_version: int
    partner_id: str | None
    time: datetime
    data: dict[str, Any]
    source: str = EVENT_SOURCE

    @property
    def kind(self) -> str:
        """``prm.partner.tier_changed.v1`` -> ``partner``."""
        return self.type.split(".")[1]

    @property
    def name(self) -> str:
        """``prm.partner.tier_changed.v1`` -> ``tier_changed``."""
        return self.type.split(".")[2]

    def to_cloudevent(self) -> dict[str, Any]:
        return {
            "specversion": SPECVERSION,
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "time": iso(self.time),
            "subject": self.subject,
            "datacontenttype": "application/json",
            "sequence": str(self.sequence),
            "aggregateid": self.aggregate_id,
            "aggregateversion": str(self.aggregate_version),
            "partnerid": self.partner_id or "",
            "data": self.data,
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_cloudevent(), option=orjson.OPT_SORT_KEYS)

    @classmethod
    def from_cloudevent(cls, ce: dict[str, Any]) -> EventEnvelope:
        return cls(
            id=ce["id"],
            type=ce["type"],
            subject=ce["subject"],
            sequence=int(ce["sequence"]),
            aggregate_id=ce["aggregateid"],
            aggregate_version=int(ce["aggregateversion"]),
            partner_id=ce.get("partnerid") or None,
            time=parse_time(ce["time"]),
            data=ce["data"],
            source=ce.get("source", EVENT_SOURCE),
        )

    @classmethod
    def from_json(cls, raw: bytes) -> EventEnvelope:
        return cls.from_cloudevent(orjson.loads(raw))


def subject_of(event: Any) -> str:
    """The business id of the event's aggregate (``P-0042``, ``R-0007``…)."""
    subject = getattr(event, "subject", None)
    if subject:
        return str(subject)
    kind = wire_type(event).split(".")[1]
    return str(getattr(event, f"{kind}_id", event.originator_id))


def envelope_of(event: Any, position: int) -> EventEnvelope:
    """Envelope of a domain event recorded at ``position``."""
    data = {k: _jsonable(v) for k, v in event.__dict__.items() if k not in _BASE_FIELDS}
    return EventEnvelope(
        id=str(stable_event_id(event)),
        type=wire_type(event),
        subject=subject_of(event),
        sequence=position,
        aggregate_id=str(event.originator_id),
        aggregate_version=event.originator_version,
        partner_id=getattr(event, "partner_id", None),
        time=event.timestamp,
        data=data,
    )


# The event store's JSON (eventsourcing's ``JSONTranscoder``, compact separators) writes a datetime as
# ``{"_type_":"datetime_iso","_data_":"<isoformat>"}`` and a date as ``{"_type_":"date_iso",…}``. Inside a
# JSON string every ``"`` is escaped, so this byte sequence only ever matches such an object, whole.
_TRANSCODED = re.compile(rb'\{"_type_":"(datetime_iso|date_iso)","_data_":"([^"\\]*)"\}')
_TYPE_KEY = b'"_type_"'
# orjson reads an integer outside 64 bits as a float, the json module as an int: any run of 19 digits
# (in a number or in a string) leaves the event to the mapper.
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_DIGITS = b"0" * 19
_CLASS_VERSION_KEY = b'"class_version"'


def _as_wire_text(match: re.Match[bytes]) -> bytes:
    text = match[2].decode()
    if match[1] == b"datetime_iso":
        return b'"' + iso(datetime.fromisoformat(text)).encode() + b'"'
    return b'"' + date.fromisoformat(text).isoformat().encode() + b'"'


_READS_FROM_STATE: dict[type[Any], bool] = {}


def _reads_from_state(event_class: type[Any]) -> bool:
    """Whether ``envelope_of`` reads ``subject`` and ``partner_id`` of this class's events from their state.

    Not when the class upcasts (``class_version``), overrides attribute access, or defines a data
    descriptor (a property) under one of these names: it would win over the instance's ``__dict__``.
    """
    try:
        return _READS_FROM_STATE[event_class]
    except KeyError:
        pass
    get_attribute: Any = event_class.__getattribute__
    plain = getattr(event_class, "class_version", 1) == 1 and get_attribute is object.__getattribute__
    for name in ("subject", "partner_id"):
        attribute = inspect.getattr_static(event_class, name, None)
        if hasattr(type(attribute), "__set__") or hasattr(type(attribute), "__delete__"):
            plain = False
    _READS_FROM_STATE[event_class] = plain
    return plain


def envelope_of_stored(
    event_class: type[Any], originator_id: UUID, originator_version: int, state: bytes, position: int
) -> EventEnvelope | None:
    """``envelope_of`` straight from a stored event's JSON state, without building the domain event.

    The same envelope (and ``to_json`` bytes) as ``envelope_of(mapper.to_domain_event(stored), position)``
    for a state written by eventsourcing's ``JSONTranscoder`` with ``datetime_iso`` and ``date_iso``
    decoded by ``datetime.fromisoformat`` and ``date.fromisoformat``, and no cipher or compressor (the
    caller checks the mapper). Each transcoded value is decoded and rendered by the same functions as
    ``envelope_of``: datetimes with ``iso``, dates with ``isoformat``. Returns ``None`` (use
    ``envelope_of``) for anything else: other transcoded types, a ``class_version`` (upcasting), a state
    without ``subject`` or ``partner_id``, or JSON that orjson may not read as the json module does
    (``NaN``, ``1e400``, a run of 19 digits: integers beyond 64 bits).
    """
    if _CLASS_VERSION_KEY in state or not _reads_from_state(event_class):
        return None
    try:
        plain = _TRANSCODED.sub(_as_wire_text, state)
    except ValueError:  # not an ISO date: decoding the domain event fails the same way, with its message
        return None
    if _TYPE_KEY in plain or _LONG_DIGITS in plain.translate(_DIGITS_AS_ZERO):
        return None
    try:
        document = orjson.loads(plain)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(document, dict):
        return None
    subject = document.get("subject")
    timestamp = document.get("timestamp")
    if not subject or "partner_id" not in document or not isinstance(timestamp, str):
        return None
    return EventEnvelope(
        id=str(event_id(originator_id, originator_version)),
        type=wire_type_of(event_class),
        subject=str(subject),
        sequence=position,
        aggregate_id=str(originator_id),
        aggregate_version=originator_version,
        partner_id=document["partner_id"],
        time=parse_time(timestamp),
        data={k: v for k, v in document.items() if k not in _BASE_FIELDS},
    )
