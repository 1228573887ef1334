"""Read-side progress (embedded projector, real-stack checkpoints) and the request bodies' contracts."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, get_args

import pytest

from api.http import bodies
from api.progress import ProgressReport, projection_position
from api.projector import LocalProjector, PartnerHistory
from consumers.wire import SaleRecorded
from domain.application import PartnerProgram
from domain.program import PARTNER_SIZES, PARTNER_TYPES, TIERS
from domain.registration import REJECTION_REASONS
from projections.memory import InMemoryProjectionStore
from projections.port import Checkpoint

EVENTS, PROGRAM = "prm.events.v1", "prm.program.v1"


def _kafka(topic: str, partition: int, sequence: int, offset: int) -> tuple[str, Checkpoint]:
    source = f"kafka:{topic}:{partition}"
    return source, Checkpoint(source, sequence, offset)


class TestProjectionPositionFromKafkaCheckpoints:
    def test_store_checkpoint_is_exact(self) -> None:
        assert projection_position({"store": Checkpoint("store", 42)}, relay_position=None, ends=None) == 42
        assert projection_position({}, relay_position=10, ends=None) == 0

    def test_caught_up_partitions_reach_the_relay_position(self) -> None:
        marks = dict([_kafka(EVENTS, 0, 40, 9), _kafka(EVENTS, 1, 35, 4), _kafka(PROGRAM, 0, 12, 2)])
        ends = {(EVENTS, 0): 10, (EVENTS, 1): 5, (PROGRAM, 0): 3}
        assert projection_position(marks, relay_position=41, ends=ends) == 41

    def test_a_busy_partition_bounds_the_position_by_its_checkpoint(self) -> None:
        marks = dict([_kafka(EVENTS, 0, 40, 9), _kafka(EVENTS, 1, 35, 4)])
        ends = {(EVENTS, 0): 10, (EVENTS, 1): 8}  # partition 1 has 3 records still to apply
        assert projection_position(marks, relay_position=50, ends=ends) == 35

    def test_an_unconsumed_partition_holds_everything_back_unless_empty(self) -> None:
        marks = dict([_kafka(EVENTS, 0, 40, 9)])
        assert projection_position(marks, relay_position=40, ends={(EVENTS, 0): 10, (EVENTS, 1): 3}) == 0
        assert projection_position(marks, relay_position=40, ends={(EVENTS, 0): 10, (EVENTS, 1): 0}) == 40

    def test_without_end_offsets_only_the_checkpoints_count(self) -> None:
        marks = dict([_kafka(EVENTS, 0, 40, 9), _kafka(EVENTS, 1, 35, 4)])
        assert projection_position(marks, relay_position=50, ends=None) == 35
        assert projection_position(marks, relay_position=None, ends=None) == 35


def test_progress_report() -> None:
    report = ProgressReport(head=100, positions={"ledger": 90, "conflicts": 100}, relay_position=97)
    assert report.reached() == 90 and report.reached(["conflicts"]) == 100
    assert report.lag() == 10 and report.lag(["conflicts"]) == 0 and report.relay_lag == 3


def _apply(program: PartnerProgram, partner_id: str) -> Any:
    return program.apply_partner(
        partner_id=partner_id,
        name=f"Partner {partner_id}",
        type="reseller",
        region="VN",
        size="small",
        actor="ops@test",
        at=datetime(2026, 1, 5, tzinfo=UTC),
    )


def test_local_projector_catches_up_incrementally_and_feeds_the_history() -> None:
    program = PartnerProgram(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    store = InMemoryProjectionStore()
    _apply(program, "P-1")
    history = PartnerHistory()
    projector = LocalProjector(program, store, history=history)
    assert projector.report().lag() == 1
    assert projector.catch_up() == 1
    second = _apply(program, "P-2")
    assert projector.report().reached() == 1
    report = projector.wait_for(second.position, ["dashboards"], timeout=0)
    assert report.reached(["dashboards"]) == second.position == 2
    assert [e.subject for e in history.of("P-2")] == ["P-2"] and history.partners() == ["P-1", "P-2"]
    # a second projector over the same store resumes from its checkpoints
    assert LocalProjector(program, store).position == 2
    assert set(store.load_kind("dashboards", "partner")) == {"P-1", "P-2"}


def test_history_catches_up_from_the_store_by_itself() -> None:
    program = PartnerProgram(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    _apply(program, "P-1")
    history = PartnerHistory(program)
    history.catch_up()
    _apply(program, "P-2")
    history.catch_up()
    assert [e.sequence for e in history.of("P-1") + history.of("P-2")] == [1, 2]


def test_body_vocabularies_are_the_domains() -> None:
    assert get_args(bodies.PartnerType) == PARTNER_TYPES
    assert get_args(bodies.PartnerSize) == PARTNER_SIZES
    assert get_args(bodies.Tier) == TIERS
    assert get_args(bodies.UpperTier) == TIERS[1:]
    assert get_args(bodies.RejectionReason) == REJECTION_REASONS


SALE = {
    "sale_id": "S-2026-000123",
    "partner_id": "P-0042",
    "registration_id": "R-0007",
    "customer": {"name": "Công ty TNHH Minh Phát", "domain": "minhphat.vn", "tax_id": "0101234567", "country": "VN"},
    "lines": [
        {"sku": "CRM-PRO-12M", "category": "software", "quantity": 3, "unit_price_minor": 12000000, "currency": "VND"}
    ],
    "occurred_at": "2026-03-01T09:59:41Z",
}


def test_the_sale_body_is_the_wire_contracts_data() -> None:
    """What the HTTP API accepts, the Kafka contract accepts too (and the spec's example is both)."""
    api = bodies.SaleRecording.model_validate(SALE)
    wire = SaleRecorded.model_validate_json(json.dumps(SALE))
    assert api.model_dump(mode="json", exclude_none=True) == wire.model_dump(mode="json", exclude_none=True)
    assert set(bodies.SaleRecording.model_fields) == set(SaleRecorded.model_fields)
    assert set(bodies.SaleLine.model_fields) == set(
        SaleRecorded.model_fields["lines"].annotation.__args__[0].model_fields
    )  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "change",
    [
        {"occurred_at": "2026-03-01T09:59:41"},  # naive
        {"occurred_at": "0001-01-01T00:00:00+05:00"},  # out of range
        {"lines": [{**SALE["lines"][0], "quantity": 3.0}]},  # type: ignore[index]
        {"lines": [{**SALE["lines"][0], "currency": "VND"}, {**SALE["lines"][0], "currency": "USD"}]},  # type: ignore[index]
        {"customer": {"name": "a\x00b"}},
        {"partnerId": "P-1"},
    ],
)
def test_the_sale_body_refuses_what_the_wire_refuses(change: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        bodies.SaleRecording.model_validate({**SALE, **change})
