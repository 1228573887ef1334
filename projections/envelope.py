"""The one shape every projection reads: a recorded domain event as a CloudEvents 1.0 envelope.

The relay publishes exactly this on Kafka, the embedded mode builds it from the
event store, and replays read it back from either: so the projections see the
same input whichever path the events took.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any
from uuid import UUID

import orjson

from domain.base import stable_event_id, wire_type

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
