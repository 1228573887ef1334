"""Sales and refunds (events.md, channel.md, commissions.md): recording, idempotency, refunds, bonus, flags."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

import pytest

from domain.errors import (
    CurrencyMismatch,
    DuplicateWithDifferentData,
    NotFound,
    RefundExceedsSale,
    UnknownPartner,
    ValidationFailed,
)
from domain.sale import Opportunity, Sale
from tests.unit.conftest import ADMIN, MINH_PHAT_EN, MINH_PHAT_VI, T0, World, at, event_names, sale_line, state_of


def recorded(**changes: Any) -> Sale:
    fields: dict[str, Any] = {
        "sale_id": "S-1",
        "partner_id": "P-1",
        "registration_id": None,
        "customer": dict(MINH_PHAT_VI),
        "lines": [sale_line(3, 12_000_000), sale_line(2, 5_000_000, sku="CRM-ADDON")],
        "occurred_at": T0,
        "source": "erp/hanoi",
        "flags": [],
        "registration_bonus": False,
    }
    fields.update(changes)
    return Sale.record(**fields)


def refund(sale: Sale, refund_id: str, amount: int, currency: str = "VND", when: datetime = T0) -> bool:
    return sale.refund(
        refund_id=refund_id,
        amount_minor=amount,
        currency=currency,
        occurred_at=when + timedelta(days=3),
        reason="returned",
        source="billing",
    )


# ------------------------------------------------------------------ the aggregate


def test_record_computes_the_total_and_currency() -> None:
    sale = recorded(flags=["b", "a", "b"])
    events = sale.collect_events()
    assert event_names(events) == ["Recorded"]
    assert sale.total_minor == 3 * 12_000_000 + 2 * 5_000_000
    assert sale.currency == "VND"
    assert sale.flags == ["a", "b"]
    assert sale.refunded_minor == 0
    assert sale.remaining_minor == sale.total_minor
    assert sale.lines[0]["category"] == "software"


@pytest.mark.parametrize(
    ("lines", "error", "message"),
    [
        ([], ValidationFailed, "a sale needs at least one line"),
        (
            [sale_line(currency="VND"), sale_line(currency="USD")],
            CurrencyMismatch,
            "must share one currency, got USD, VND",
        ),
        ([sale_line(quantity=0)], ValidationFailed, r"lines\[0\].quantity must be > 0"),
        ([sale_line(quantity=True)], ValidationFailed, "must be an integer number of minor units"),
        ([sale_line(unit_price_minor=-1)], ValidationFailed, r"lines\[0\].unit_price_minor must be ≥ 0"),
        ([sale_line(unit_price_minor=1.0)], ValidationFailed, "must be an integer"),
        ([sale_line(currency="dong")], ValidationFailed, "ISO 4217"),
        ([sale_line(sku="")], ValidationFailed, r"lines\[0\].sku is required"),
    ],
)
def test_record_refuses_invalid_lines(lines: list[dict[str, Any]], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        recorded(lines=lines)


def test_record_refuses_a_naive_time_and_a_missing_source() -> None:
    with pytest.raises(ValueError, match="naive datetime"):
        recorded(occurred_at=datetime(2026, 1, 5))
    with pytest.raises(ValidationFailed, match="source is required"):
        recorded(source="")


def test_refunds_are_cumulative_and_never_exceed_the_sale() -> None:
    sale = recorded(lines=[sale_line(1, 1_000)])
    sale.collect_events()

    assert refund(sale, "RF-1", 400)
    assert refund(sale, "RF-2", 500)
    events = sale.collect_events()
    assert event_names(events) == ["Refunded", "Refunded"]
    assert [(e.refunded_before_minor, e.refunded_after_minor) for e in events] == [(0, 400), (400, 900)]
    assert sale.refunded_minor == 900
    assert sale.remaining_minor == 100

    with pytest.raises(
        RefundExceedsSale, match=r"refund RF-3 of 101 VND exceeds what remains of sale S-1 \(100 of 1000 VND\)"
    ):
        refund(sale, "RF-3", 101)
    assert sale.collect_events() == []
    assert sale.refunded_minor == 900

    assert refund(sale, "RF-3", 100)  # exactly the rest
    assert sale.remaining_minor == 0
    with pytest.raises(RefundExceedsSale):
        refund(sale, "RF-4", 1)


def test_a_refund_in_another_currency_is_refused() -> None:
    sale = recorded()
    sale.collect_events()
    with pytest.raises(CurrencyMismatch, match="refund RF-1 is in USD but sale S-1 is in VND"):
        refund(sale, "RF-1", 10, currency="USD")
    assert sale.collect_events() == []
    assert sale.refunds == {}


def test_a_repeated_refund_is_a_duplicate_and_a_different_one_is_refused() -> None:
    sale = recorded()
    assert refund(sale, "RF-1", 1_000)
    sale.collect_events()
    assert refund(sale, "RF-1", 1_000) is False  # delivered twice: no effect
    assert sale.collect_events() == []
    with pytest.raises(
        DuplicateWithDifferentData, match="refund RF-1 of sale S-1 was already recorded with different data"
    ):
        refund(sale, "RF-1", 2_000)
    with pytest.raises(DuplicateWithDifferentData):
        refund(sale, "RF-1", 1_000, when=T0 + timedelta(days=1))
    assert sale.refunded_minor == 1_000


@pytest.mark.parametrize(
    ("amount", "message"),
    [(0, "amount_minor must be > 0"), (-5, "amount_minor must be > 0"), (1.5, "must be an integer")],
)
def test_a_refund_amount_must_be_positive_whole_minor_units(amount: Any, message: str) -> None:
    sale = recorded()
    sale.collect_events()
    with pytest.raises(ValidationFailed, match=message):
        refund(sale, "RF-1", amount)
    assert sale.collect_events() == []


def test_same_facts_ignores_the_source_and_the_message_id() -> None:
    sale = recorded()
    facts: dict[str, Any] = {
        "partner_id": "P-1",
        "registration_id": None,
        "customer": dict(MINH_PHAT_VI),
        "lines": [sale_line(3, 12_000_000), sale_line(2, 5_000_000, sku="CRM-ADDON")],
        "occurred_at": T0,
    }
    assert sale.same_facts(**facts)
    assert not sale.same_facts(**{**facts, "occurred_at": T0 + timedelta(seconds=1)})
    assert not sale.same_facts(**{**facts, "lines": [sale_line(3, 12_000_000)]})
    assert not sale.same_facts(**{**facts, "partner_id": "P-2"})
    assert not sale.same_facts(**{**facts, "customer": dict(MINH_PHAT_EN)})


# ------------------------------------------------------------------ through the application


def test_record_a_partner_sale(unit_world: World) -> None:
    app = unit_world.app
    unit_world.active("P-1")
    result = unit_world.sale("S-1", "P-1", at(10), message_id="msg-1")
    assert result.events == ["prm.sale.recorded.v1"]
    assert result.duplicate is False
    assert result.details == {"flags": []}
    assert result.aggregate_id == Sale.id_for("S-1")
    sale = app.sale("S-1")
    assert (sale.partner_id, sale.total_minor, sale.currency, sale.flags) == ("P-1", 36_000_000, "VND", [])
    assert sale.registration_bonus is False


def test_record_a_direct_sale(unit_world: World) -> None:
    app = unit_world.app
    result = unit_world.sale("S-D", None, at(10))
    assert result.events == ["prm.sale.recorded.v1"]
    sale = app.sale("S-D")
    assert sale.partner_id is None
    assert sale.flags == []
    with pytest.raises(ValidationFailed, match="a direct sale cannot reference a deal registration"):
        unit_world.sale("S-D2", None, at(10), registration_id="R-1")


def test_an_identical_redelivery_is_a_no_op(unit_world: World) -> None:
    app = unit_world.app
    unit_world.active("P-1")
    unit_world.sale("S-1", "P-1", at(10), message_id="msg-1")
    position = app.max_position()

    again = unit_world.sale("S-1", "P-1", at(10), message_id="msg-2", source="billing")
    assert again.duplicate is True
    assert again.position is None
    assert again.events == []
    assert again.aggregate_id == Sale.id_for("S-1")
    assert app.max_position() == position
    assert app.sale("S-1").version == 1


@pytest.mark.parametrize(
    "changes",
    [
        {"when": at(11)},
        {"lines": [sale_line(4, 12_000_000)]},
        {"customer": {"name": "Another customer", "country": "VN"}},
        {"partner_id": None},
    ],
)
def test_the_same_sale_id_with_different_data_is_refused(unit_world: World, changes: dict[str, Any]) -> None:
    app = unit_world.app
    unit_world.active("P-1")
    unit_world.sale("S-1", "P-1", at(10))
    position = app.max_position()
    arguments: dict[str, Any] = {"sale_id": "S-1", "partner_id": "P-1", "when": at(10)}
    arguments.update(changes)
    with pytest.raises(DuplicateWithDifferentData, match="sale S-1 was already recorded with different data"):
        unit_world.sale(**arguments)
    assert app.max_position() == position


def test_an_unknown_partner_is_refused(unit_world: World) -> None:
    app = unit_world.app
    with pytest.raises(UnknownPartner, match="unknown partner 'P-404'") as caught:
        unit_world.sale("S-1", "P-404", at(10))
    assert caught.value.code == "unknown_partner"
    with pytest.raises(NotFound):
        app.sale("S-1")


def test_mixed_currencies_are_refused(unit_world: World) -> None:
    app = unit_world.app
    unit_world.active("P-1")
    with pytest.raises(CurrencyMismatch, match="all lines of a sale must share one currency"):
        unit_world.sale("S-1", "P-1", at(10), lines=[sale_line(currency="VND"), sale_line(currency="USD")])
    with pytest.raises(NotFound, match="unknown sale 'S-1'"):
        app.sale("S-1")


def test_refunds_through_the_application(unit_world: World) -> None:
    app = unit_world.app
    unit_world.active("P-1")
    unit_world.sale("S-1", "P-1", at(10), lines=[sale_line(1, 1_000_000)])
    common: dict[str, Any] = {"sale_id": "S-1", "currency": "VND", "occurred_at": at(12), "source": "billing"}

    first = app.refund_sale(refund_id="RF-1", amount_minor=600_000, **common)
    assert first.events == ["prm.sale.refunded.v1"]
    position = app.max_position()

    assert app.refund_sale(refund_id="RF-1", amount_minor=600_000, **common).duplicate is True
    assert app.max_position() == position
    with pytest.raises(DuplicateWithDifferentData):
        app.refund_sale(refund_id="RF-1", amount_minor=500_000, **common)
    with pytest.raises(RefundExceedsSale, match=r"\(400000 of 1000000 VND\)"):
        app.refund_sale(refund_id="RF-2", amount_minor=400_001, **common)
    with pytest.raises(CurrencyMismatch):
        app.refund_sale(refund_id="RF-2", amount_minor=1, **{**common, "currency": "USD"})
    with pytest.raises(NotFound, match="unknown sale 'S-404'"):
        app.refund_sale(refund_id="RF-9", amount_minor=1, **{**common, "sale_id": "S-404"})
    assert app.max_position() == position

    app.refund_sale(refund_id="RF-2", amount_minor=400_000, **common)
    sale = app.sale("S-1")
    assert sale.refunded_minor == 1_000_000
    assert sorted(sale.refunds) == ["RF-1", "RF-2"]


# ------------------------------------------------------------------ flags


def test_a_sale_of_a_suspended_partner_is_flagged(unit_world: World) -> None:
    app = unit_world.app
    unit_world.active("P-1")
    app.suspend_partner("P-1", actor=ADMIN, reason="audit", at=at(5))
    result = unit_world.sale("S-1", "P-1", at(10))
    assert result.details == {"flags": ["partner_suspended"]}
    assert app.sale("S-1").flags == ["partner_suspended"]


def test_a_sale_outside_any_contract_is_flagged(unit_world: World) -> None:
    app = unit_world.app
    unit_world.active("P-1", ends_on=date(2026, 3, 31))
    unit_world.sale("S-in", "P-1", datetime.fromisoformat("2026-03-31T23:00:00+00:00"))
    unit_world.sale("S-out", "P-1", datetime.fromisoformat("2026-04-01T00:00:00+00:00"))
    assert app.sale("S-in").flags == []
    assert app.sale("S-out").flags == ["no_contract_in_force"]


def test_a_sale_of_a_terminated_partner_without_contract_carries_both_flags(unit_world: World) -> None:
    app = unit_world.app
    unit_world.active("P-1")
    app.terminate_contract("C-P-1", actor=ADMIN, reason="partner left", effective_on=date(2026, 2, 1), at=at(20))
    app.terminate_partner("P-1", actor=ADMIN, reason="left", at=at(20))
    unit_world.sale("S-1", "P-1", at(30))
    assert app.sale("S-1").flags == ["no_contract_in_force", "partner_terminated"]


# ------------------------------------------------------------------ the registration bonus and `won`


@pytest.fixture
def approved_registration(unit_world: World) -> World:
    app = unit_world.app
    unit_world.active("P-1")
    unit_world.active("P-2")
    unit_world.submit("R-1", "P-1", MINH_PHAT_VI, when=at(1))
    app.approve_registration("R-1", actor=ADMIN, at=at(2))
    return unit_world


def test_a_sale_within_the_protection_gets_the_bonus_and_wins_the_registration(approved_registration: World) -> None:
    world = approved_registration
    app = world.app

    result = world.sale("S-1", "P-1", at(30), registration_id="R-1")

    assert result.events == [
        "prm.sale.recorded.v1",
        "prm.registration.won.v1",
        "prm.partner.registration_closed.v1",
    ]
    assert app.sale("S-1").registration_bonus is True
    assert app.sale("S-1").flags == []
    registration = app.registration("R-1")
    assert (registration.status, registration.won_sale_id, registration.closed_at) == ("won", "S-1", at(30))
    assert app.partner("P-1").open_registrations == []

    # a later sale within the protection gets the bonus too, without a second `won`
    second = world.sale("S-2", "P-1", at(60), registration_id="R-1")
    assert second.events == ["prm.sale.recorded.v1"]
    assert app.sale("S-2").registration_bonus is True
    assert app.registration("R-1").won_sale_id == "S-1"

    # after the protection, no bonus
    late = world.sale("S-3", "P-1", at(92), registration_id="R-1")
    assert late.details == {"flags": ["registration_not_protected"]}
    assert app.sale("S-3").registration_bonus is False


def test_the_protection_bounds_are_approved_at_inclusive_protected_until_exclusive(
    approved_registration: World,
) -> None:
    world = approved_registration
    app = world.app
    world.sale("S-0", "P-1", at(2) - timedelta(seconds=1), registration_id="R-1")
    assert app.sale("S-0").registration_bonus is False
    assert app.registration("R-1").status == "approved"
    world.sale("S-1", "P-1", at(2), registration_id="R-1")
    assert app.sale("S-1").registration_bonus is True
    world.sale("S-2", "P-1", at(92) - timedelta(microseconds=1), registration_id="R-1")
    assert app.sale("S-2").registration_bonus is True


def test_an_extended_protection_extends_the_bonus(approved_registration: World) -> None:
    world = approved_registration
    app = world.app
    app.extend_protection("R-1", actor=ADMIN, reason="budget cycle", at=at(80))
    world.sale("S-1", "P-1", at(100), registration_id="R-1")
    assert app.sale("S-1").registration_bonus is True
    assert app.registration("R-1").status == "won"


def test_a_sale_before_approval_does_not_win(unit_world: World) -> None:
    app = unit_world.app
    unit_world.active("P-1")
    unit_world.submit("R-1", "P-1", MINH_PHAT_VI, when=at(1))
    result = unit_world.sale("S-1", "P-1", at(3), registration_id="R-1")
    assert result.details == {"flags": ["registration_not_protected"]}
    assert app.registration("R-1").status == "submitted"
    assert app.partner("P-1").open_registrations == ["R-1"]


def test_a_registration_of_another_partner_gives_no_bonus(approved_registration: World) -> None:
    world = approved_registration
    app = world.app
    result = world.sale("S-1", "P-2", at(30), registration_id="R-1")
    assert result.details == {"flags": ["registration_of_another_partner"]}
    assert app.sale("S-1").registration_bonus is False
    assert app.registration("R-1").status == "approved"


def test_an_unknown_registration_is_flagged(approved_registration: World) -> None:
    result = approved_registration.sale("S-1", "P-1", at(30), registration_id="R-404")
    assert result.details == {"flags": ["registration_not_found"]}


@pytest.mark.parametrize("closing", ["withdrawn", "lost", "expired"])
def test_a_registration_closed_before_the_sale_gives_no_bonus(approved_registration: World, closing: str) -> None:
    world = approved_registration
    app = world.app
    if closing == "withdrawn":
        app.withdraw_registration("R-1", actor="sales@p-1.vn", at=at(10))
    elif closing == "lost":
        app.mark_registration_lost("R-1", actor=ADMIN, reason="competitor", at=at(10))
    else:
        app.expire_registrations(at=at(92))
    world.sale("S-1", "P-1", at(20), registration_id="R-1")
    assert app.sale("S-1").registration_bonus is False
    assert app.sale("S-1").flags == ["registration_not_protected"]
    assert app.registration("R-1").status == closing


def test_a_sale_of_a_suspended_partner_still_wins_its_registration(approved_registration: World) -> None:
    world = approved_registration
    app = world.app
    app.suspend_partner("P-1", actor=ADMIN, reason="audit", at=at(5))
    result = world.sale("S-1", "P-1", at(10), registration_id="R-1")
    assert result.details == {"flags": ["partner_suspended"]}
    assert app.sale("S-1").registration_bonus is True
    assert app.registration("R-1").status == "won"


# ------------------------------------------------------------------ opportunities


def test_opportunities_are_idempotent(unit_world: World) -> None:
    app = unit_world.app
    arguments: dict[str, Any] = {
        "opportunity_id": "O-1",
        "owner": "direct.sales@prm",
        "customer": dict(MINH_PHAT_VI),
        "estimated_value_minor": 10_000,
        "currency": "VND",
        "opened_at": at(5),
        "source": "crm",
    }
    first = app.open_opportunity(**arguments)
    assert first.events == ["prm.opportunity.opened.v1"]
    assert app.open_opportunity(**{**arguments, "message_id": "again"}).duplicate is True
    with pytest.raises(DuplicateWithDifferentData, match="opportunity O-1 was already recorded with different data"):
        app.open_opportunity(**{**arguments, "estimated_value_minor": 20_000})
    with pytest.raises(ValidationFailed, match="actor is required"):
        app.open_opportunity(**{**arguments, "opportunity_id": "O-2", "owner": ""})
    opportunity = app.repository.get(Opportunity.id_for("O-1"))
    assert opportunity.partner_id is None


# ------------------------------------------------------------------ persistence


def test_sales_round_trip(unit_world: World) -> None:
    app = unit_world.app
    sale = recorded(sale_id="S-RT", flags=["no_contract_in_force"], registration_id="R-1", registration_bonus=True)
    refund(sale, "RF-1", 1_000)
    refund(sale, "RF-2", 2_000, when=at(1))
    app.save(sale)
    assert state_of(app.sale("S-RT")) == state_of(sale)
