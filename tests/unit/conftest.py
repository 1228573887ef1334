"""Shared helpers for the unit tests of the aggregates and the application service.

Everything is deterministic: instants are explicit, timezone-aware UTC datetimes
and every command is given its ``at``/``submitted_at``/``occurred_at``. The
application runs on the in-memory (POPO) event store, so a whole scenario costs
milliseconds while still transcoding every event to JSON and back.

Fixtures are prefixed ``unit_`` so they never clash with other conftests; the
plain helpers below are also imported by the hypothesis state machines.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from domain.application import PartnerProgram
from domain.base import PrmAggregate
from domain.partner import Partner

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
"""A Monday in the first quarter of 2026: the start of most scenarios."""

CONTRACT_START = date(2026, 1, 1)
CONTRACT_END = date(2026, 12, 31)
PLAN_ID = "PLAN-STD"
ONBOARDING = "partner-onboarding"
ADMIN = "admin@prm.example"

MINH_PHAT_VI = {"name": "Công ty TNHH Minh Phát", "domain": None, "tax_id": None, "country": "VN"}
MINH_PHAT_EN = {"name": "Minh Phat Co., Ltd", "domain": None, "tax_id": None, "country": "VN"}

SMALL_CAPACITY = {"registered": 2, "silver": 3, "gold": 4, "platinum": 5}


def at(days: float = 0, hours: float = 0, minutes: float = 0) -> datetime:
    """``T0`` moved by the given amount of time."""
    return T0 + timedelta(days=days, hours=hours, minutes=minutes)


def state_of(aggregate: PrmAggregate) -> dict[str, Any]:
    """The aggregate's state, without the events still waiting to be saved."""
    return {key: value for key, value in vars(aggregate).items() if key != "_pending_events"}


def event_names(events: list[Any]) -> list[str]:
    return [type(e).__name__ for e in events]


def new_app() -> PartnerProgram:
    return PartnerProgram(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})


# ---------------------------------------------------------------- aggregates


def applied_partner(partner_id: str = "P-1", when: datetime = T0, **kwargs: Any) -> Partner:
    fields: dict[str, Any] = {
        "name": "Acme Vietnam",
        "type": "reseller",
        "region": "VN",
        "size": "small",
        "actor": ADMIN,
    }
    fields.update(kwargs)
    return Partner.apply_to_join(partner_id=partner_id, at=when, **fields)


def onboarding_partner(partner_id: str = "P-1", when: datetime = T0) -> Partner:
    partner = applied_partner(partner_id, when)
    partner.approve(ADMIN, when)
    return partner


def active_partner(partner_id: str = "P-1", when: datetime = T0, contract_id: str = "C-1") -> Partner:
    partner = onboarding_partner(partner_id, when)
    partner.attach_contract(contract_id, when)
    partner.record_training(ONBOARDING, "lan@acme.vn", when, ADMIN)
    assert partner.complete_onboarding_if_ready(ADMIN, when, ONBOARDING)
    return partner


def sale_line(
    quantity: int = 1, unit_price_minor: int = 1_000_000, currency: str = "VND", sku: str = "CRM-PRO-12M", **extra: Any
) -> dict[str, Any]:
    return {
        "sku": sku,
        "category": "software",
        "quantity": quantity,
        "unit_price_minor": unit_price_minor,
        "currency": currency,
        **extra,
    }


# ----------------------------------------------------------- application world


class World:
    """Builds scenarios on a :class:`PartnerProgram` with explicit times."""

    def __init__(self, app: PartnerProgram) -> None:
        self.app = app
        self._plan = False

    def plan(self) -> str:
        if not self._plan:
            self.app.create_plan(plan_id=PLAN_ID, name="Standard", actor=ADMIN, at=at(-30))
            self._plan = True
        return PLAN_ID

    def applied(self, partner_id: str, when: datetime = T0, region: str = "VN") -> None:
        self.app.apply_partner(
            partner_id=partner_id,
            name=f"Partner {partner_id}",
            type="reseller",
            region=region,
            size="small",
            actor=ADMIN,
            at=when,
        )

    def sign(
        self,
        partner_id: str,
        contract_id: str | None = None,
        *,
        when: datetime = T0,
        starts_on: date = CONTRACT_START,
        ends_on: date = CONTRACT_END,
        auto_renew: bool = False,
        territory: list[str] | None = None,
    ) -> str:
        contract_id = contract_id or f"C-{partner_id}"
        self.app.sign_contract(
            contract_id=contract_id,
            partner_id=partner_id,
            starts_on=starts_on,
            ends_on=ends_on,
            auto_renew=auto_renew,
            territory=["VN"] if territory is None else territory,
            terms="Standard reseller agreement v1",
            commission_plan_id=self.plan(),
            actor=ADMIN,
            at=when,
        )
        return contract_id

    def active(self, partner_id: str, when: datetime = T0, **contract: Any) -> str:
        """An active partner: applied, approved, contract signed, onboarding training done."""
        self.applied(partner_id, when)
        self.app.approve_partner(partner_id, actor=ADMIN, at=when)
        self.sign(partner_id, when=when, **contract)
        self.app.record_training(partner_id, course=ONBOARDING, person="lan@partner.vn", actor=ADMIN, at=when)
        assert self.app.partner(partner_id).status == "active"
        return partner_id

    def submit(
        self,
        registration_id: str,
        partner_id: str,
        customer: dict[str, Any] | None = None,
        when: datetime = T0,
        value: int = 50_000_000,
    ) -> Any:
        return self.app.submit_registration(
            registration_id=registration_id,
            partner_id=partner_id,
            customer=customer or {"name": f"Customer of {registration_id}", "country": "VN"},
            estimated_value_minor=value,
            currency="VND",
            products=["software"],
            actor=f"sales@{partner_id.lower()}.vn",
            expected_close_on=date(2026, 6, 30),
            submitted_at=when,
        )

    def set_capacity(self, capacity: dict[str, int] | None = None, when: datetime = T0) -> None:
        self.app.change_settings(
            {"registration_capacity": dict(capacity or SMALL_CAPACITY)},
            actor=ADMIN,
            reason="small caps keep unit tests fast",
            at=when,
        )

    def sale(
        self,
        sale_id: str,
        partner_id: str | None,
        when: datetime,
        *,
        registration_id: str | None = None,
        lines: list[dict[str, Any]] | None = None,
        customer: dict[str, Any] | None = None,
        source: str = "erp/hanoi",
        message_id: str | None = None,
    ) -> Any:
        return self.app.record_sale(
            sale_id=sale_id,
            partner_id=partner_id,
            customer=customer or dict(MINH_PHAT_VI),
            lines=lines or [sale_line(3, 12_000_000)],
            occurred_at=when,
            source=source,
            registration_id=registration_id,
            message_id=message_id,
        )

    def reloaded_equals(self, aggregate: PrmAggregate) -> bool:
        return state_of(self.app.repository.get(aggregate.id)) == state_of(aggregate)


@pytest.fixture
def unit_app() -> Iterator[PartnerProgram]:
    app = new_app()
    yield app
    app.close()


@pytest.fixture
def unit_world(unit_app: PartnerProgram) -> World:
    return World(unit_app)
