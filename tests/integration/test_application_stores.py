"""The same application behaviour on the embedded SQLite store and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from api.bootstrap import StartupError, build_program
from api.settings import Settings
from domain.application import PartnerProgram
from domain.errors import ChannelConflictBlocks, DuplicateWithDifferentData, RefundExceedsSale
from projections.store_reader import read_store
from tests.helpers import onboard_partner

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgres"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    if request.param == "sqlite":
        return Settings(store="sqlite", sqlite_path=tmp_path / "events.sqlite")
    pg_url = request.getfixturevalue("pg_url")
    schema = request.getfixturevalue("pg_schema")
    return Settings(store="postgres", database_url=pg_url, database_schema=schema)


@pytest.fixture
def program(settings: Settings) -> Iterator[PartnerProgram]:
    app = build_program(settings)
    yield app
    app.close()


class TestApplicationOnEachStore:
    def test_lifecycle_positions_and_reload(self, program: PartnerProgram, settings: Settings) -> None:
        program.create_plan(plan_id="STD", name="Standard", actor="admin", at=T0)
        published = program.publish_plan_version(
            "STD", effective_from=datetime(2025, 1, 1, tzinfo=UTC), terms={}, actor="admin", reason="launch", at=T0
        )
        onboard_partner(program, "P-0001", T0)
        onboard_partner(program, "P-0002", T0)
        assert program.partner("P-0001").status == "active"

        first = program.submit_registration(
            registration_id="R-0001",
            partner_id="P-0001",
            customer={"name": "Công ty TNHH Minh Phát", "domain": "minhphat.vn", "country": "VN"},
            estimated_value_minor=1_500_000_000,
            currency="VND",
            products=["software"],
            actor="P-0001/an",
            submitted_at=T0 + timedelta(hours=1),
        )
        second = program.submit_registration(
            registration_id="R-0002",
            partner_id="P-0002",
            customer={"name": "Minh Phat Co., Ltd", "country": "VN"},
            estimated_value_minor=900_000_000,
            currency="VND",
            products=["software"],
            actor="P-0002/binh",
            submitted_at=T0 + timedelta(hours=2),
        )
        assert first.position is not None and second.position is not None and published.position is not None
        assert published.position < first.position < second.position
        assert second.details["conflicts"], "the later registration carries the channel conflict"

        program.approve_registration("R-0001", actor="channel-manager", at=T0 + timedelta(days=1))
        with pytest.raises(ChannelConflictBlocks):
            program.approve_registration("R-0002", actor="channel-manager", at=T0 + timedelta(days=1))

        lines = [
            {
                "sku": "CRM-PRO-12M",
                "category": "software",
                "quantity": 3,
                "unit_price_minor": 12_000_000,
                "currency": "VND",
            }
        ]
        sale = program.record_sale(
            sale_id="S-0001",
            partner_id="P-0001",
            registration_id="R-0001",
            customer={"name": "Minh Phát", "country": "VN"},
            lines=lines,
            occurred_at=T0 + timedelta(days=3),
            source="erp/hanoi",
        )
        assert sale.events == ["prm.sale.recorded.v1", "prm.registration.won.v1", "prm.partner.registration_closed.v1"]
        again = program.record_sale(
            sale_id="S-0001",
            partner_id="P-0001",
            registration_id="R-0001",
            customer={"name": "Minh Phát", "country": "VN"},
            lines=lines,
            occurred_at=T0 + timedelta(days=3),
            source="erp/hanoi",
        )
        assert again.duplicate and again.position is None
        with pytest.raises(DuplicateWithDifferentData):
            program.record_sale(
                sale_id="S-0001",
                partner_id="P-0002",
                customer={"name": "X", "country": "VN"},
                lines=lines,
                occurred_at=T0 + timedelta(days=3),
                source="erp/hanoi",
            )
        program.refund_sale(
            sale_id="S-0001",
            refund_id="F-1",
            amount_minor=12_000_000,
            currency="VND",
            occurred_at=T0 + timedelta(days=5),
            source="erp/hanoi",
            reason="one seat returned",
        )
        with pytest.raises(RefundExceedsSale):
            program.refund_sale(
                sale_id="S-0001",
                refund_id="F-2",
                amount_minor=24_000_001,
                currency="VND",
                occurred_at=T0 + timedelta(days=6),
                source="erp/hanoi",
            )

        # A second application instance on the same store sees exactly the same history.
        other = build_program(settings)
        try:
            assert other.registration("R-0001").status == "won"
            assert other.sale("S-0001").refunded_minor == 12_000_000
            assert other.partner("P-0001").open_registrations == []
            assert other.partner("P-0002").open_registrations == ["R-0002"]
            mine = [(e.sequence, e.type, e.subject, e.id) for e in read_store(program)]
            theirs = [(e.sequence, e.type, e.subject, e.id) for e in read_store(other)]
            assert mine == theirs
            assert [s for s, *_ in mine] == sorted(s for s, *_ in mine)
            assert len({event_id for *_, event_id in mine}) == len(mine)
            # A later instance continues the first-to-register index from the store.
            with pytest.raises(ChannelConflictBlocks):
                other.approve_registration("R-0002", actor="channel-manager", at=T0 + timedelta(days=2))
        finally:
            other.close()

    def test_sample_programme_records_every_step(self, program: PartnerProgram) -> None:
        from api.sample import generate, run_commands

        steps = generate(seed=7, scale=1)
        result = run_commands(program, steps)
        events = list(read_store(program))
        assert events, "the sample recorded events"
        assert events[-1].sequence == program.max_position()
        assert result.last_position == program.max_position()


def test_unreachable_postgres_is_one_clear_line() -> None:
    settings = Settings(store="postgres", database_url="postgresql://prm@127.0.0.1:1/prm")
    with pytest.raises(StartupError) as caught:
        build_program(settings)
    message = str(caught.value)
    assert "cannot reach PostgreSQL at 127.0.0.1:1/prm" in message
    assert "\n" not in message


def test_postgres_store_needs_a_url() -> None:
    with pytest.raises(StartupError, match="PRM_DATABASE_URL"):
        build_program(Settings(store="postgres", database_url=None))
