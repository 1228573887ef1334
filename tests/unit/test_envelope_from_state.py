"""``envelope_of_stored`` gives exactly ``envelope_of``'s envelope, bytes and ids, or declines.

The relay builds envelopes from the stored JSON without reconstructing the domain event; the
projections and the replay rely on the bytes being those ``envelope_of`` gives.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any
from uuid import UUID, uuid4, uuid5

import pytest
from eventsourcing.persistence import JSONTranscoder, Mapper, Notification, StoredEvent, Transcoding
from eventsourcing.utils import resolve_topic

from api.sample import generate, run_commands
from consumers.relay import reads_stored_json
from domain.application import PartnerProgram
from domain.base import wire_type
from domain.sale import Sale
from projections.envelope import EventEnvelope, envelope_of, envelope_of_stored


def _slow(program: PartnerProgram, notification: Notification) -> EventEnvelope:
    return envelope_of(program.mapper.to_domain_event(notification), notification.id)


def _fast(notification: Notification) -> EventEnvelope | None:
    assert isinstance(notification.originator_id, UUID)
    return envelope_of_stored(
        resolve_topic(notification.topic),
        notification.originator_id,
        notification.originator_version,
        notification.state,
        notification.id,
    )


@pytest.fixture(scope="module")
def sample_program() -> PartnerProgram:
    program = PartnerProgram(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    run_commands(program, generate())
    return program


def test_every_event_of_the_sample_gives_the_same_envelope_and_bytes(sample_program: PartnerProgram) -> None:
    assert reads_stored_json(sample_program.mapper)
    types: Counter[str] = Counter()
    start = 1
    while notifications := sample_program.notification_log.select(start=start, limit=1000):
        for notification in notifications:
            slow = _slow(sample_program, notification)
            fast = _fast(notification)
            assert fast is not None, notification.topic
            assert fast.to_json() == slow.to_json()
            assert fast == slow
            assert fast.id == str(uuid5(notification.originator_id, str(notification.originator_version)))
            types[fast.type] += 1
        start = notifications[-1].id + 1
    # The sample records every kind of aggregate and the inbound events the relay carries most.
    assert {t.split(".")[1] for t in types} >= {"partner", "contract", "registration", "sale", "plan", "opportunity"}
    assert types["prm.sale.recorded.v1"] > 100 and types["prm.sale.refunded.v1"] > 0


def _stored(state: bytes, topic: str = "domain.sale:Sale.Recorded", version: int = 1) -> Notification:
    return Notification(id=7, originator_id=uuid4(), originator_version=version, topic=topic, state=state)


def _sale_state(**changes: Any) -> dict[str, Any]:
    state: dict[str, Any] = {
        "timestamp": datetime(2026, 3, 1, 10, 0, 0, 123456, tzinfo=UTC),
        "originator_topic": "domain.sale:Sale",
        "subject": "S-1",
        "partner_id": "P-1",
        "sale_id": "S-1",
        "customer": {"name": 'Acme "quoted" {"_type_":"x"} \\ Việt Nam', "when": date(2026, 1, 2)},
        "lines": [{"sku": "A", "quantity": 1, "at": datetime(2026, 3, 1, 17, 0, tzinfo=timezone(timedelta(hours=7)))}],
        "occurred_at": datetime(2026, 3, 1, tzinfo=UTC),
    }
    state.update(changes)
    return state


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"timestamp": datetime(2026, 3, 1, 10, 0, tzinfo=UTC)},  # no microseconds
        {"occurred_at": datetime(2026, 3, 1, 3, 0, tzinfo=timezone(timedelta(hours=-5, minutes=-30)))},
        {"partner_id": None, "notes": "line one\nline two\t\u0001 \u2028 😀"},
        {"nested": [[{"deep": date(1999, 12, 31)}], {"k": [datetime(1, 1, 1, tzinfo=UTC)]}]},
        {"amount": 1.5, "tiny": 5e-324, "max": 1.7976931348623157e308, "flag": True, "empty": {}, "none": None},
        {"big": 10**18 - 1, "low": -(10**18) + 1, "zero": 0},
    ],
)
def test_transcoded_values_render_as_envelope_of_renders_them(changes: dict[str, Any]) -> None:
    program = PartnerProgram(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    state = program.mapper.transcoder.encode(_sale_state(**changes))
    notification = _stored(state)
    fast = _fast(notification)
    assert fast is not None
    assert fast.to_json() == _slow(program, notification).to_json()
    assert fast == _slow(program, notification)


@pytest.mark.parametrize(
    "changes",
    [
        {"ref": UUID("12345678-1234-5678-1234-567812345678")},  # another transcoding: uuid_hex
        {"subject": ""},  # envelope_of would fall back to the business id attribute
        {"label": "_type_"},  # looks like a transcoded object: left to the transcoder
        {"huge": 2**70},  # beyond 64 bits: orjson reads a float, the json module an int
        {"low": -(2**63) - 1},
        {"amount": float("nan")},
        {"class_version": 2},
    ],
)
def test_anything_else_is_declined(changes: dict[str, Any]) -> None:
    program = PartnerProgram(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    state = program.mapper.transcoder.encode(_sale_state(**changes))
    assert _fast(_stored(state)) is None


def test_a_state_without_partner_id_or_subject_is_declined() -> None:
    program = PartnerProgram(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    for key in ("partner_id", "subject", "timestamp"):
        state = _sale_state()
        del state[key]
        assert _fast(_stored(program.mapper.transcoder.encode(state))) is None


def test_an_invalid_iso_value_is_declined_and_left_to_the_mapper() -> None:
    month_13 = b'{"_type_":"datetime_iso","_data_":"2026-13-01T00:00:00+00:00"}'
    state = b'{"timestamp":' + month_13 + b',"subject":"S","partner_id":null}'
    assert _fast(_stored(state)) is None


def test_event_types_and_ids_are_those_of_the_domain_event() -> None:
    program = PartnerProgram(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    sale = Sale.record(
        sale_id="S-9",
        partner_id=None,
        registration_id=None,
        customer={"name": "Acme"},
        lines=[{"sku": "A", "quantity": 2, "unit_price_minor": 5, "currency": "USD"}],
        occurred_at=datetime(2026, 3, 1, tzinfo=UTC),
        source="erp",
        flags=[],
        registration_bonus=False,
        message_id="m-9",
    )
    event = sale.collect_events()[0]
    stored: StoredEvent = program.mapper.to_stored_event(event)
    assert isinstance(stored.originator_id, UUID)
    fast = envelope_of_stored(type(event), stored.originator_id, stored.originator_version, stored.state, 3)
    assert fast is not None
    assert fast.type == wire_type(event) == "prm.sale.recorded.v1"
    assert fast == envelope_of(event, 3)
    assert fast.to_json() == envelope_of(event, 3).to_json()


class _OtherDatetimes(Transcoding):
    type = datetime
    name = "datetime_iso"

    def encode(self, obj: datetime) -> str:
        return obj.isoformat()

    def decode(self, data: str) -> datetime:
        return datetime.fromisoformat(data)


def test_the_relay_reads_stored_json_only_with_the_default_transcodings() -> None:
    program = PartnerProgram(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    assert reads_stored_json(program.mapper)
    transcoder = JSONTranscoder()
    program.register_transcodings(transcoder)
    transcoder.register(_OtherDatetimes())
    assert not reads_stored_json(Mapper(transcoder=transcoder))
    compressed = PartnerProgram(env={"PERSISTENCE_MODULE": "eventsourcing.popo", "COMPRESSOR_TOPIC": "zlib"})
    assert not reads_stored_json(compressed.mapper)


class _WithSubjectProperty(Sale.Recorded):
    @property
    def subject(self) -> str:  # type: ignore[override]
        return "computed"


def test_an_event_class_that_computes_subject_is_declined() -> None:
    program = PartnerProgram(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    state = program.mapper.transcoder.encode(_sale_state())
    assert envelope_of_stored(_WithSubjectProperty, uuid4(), 1, state, 7) is None
    assert envelope_of_stored(Sale.Recorded, uuid4(), 1, state, 7) is not None
