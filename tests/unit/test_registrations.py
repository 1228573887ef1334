"""Deal registrations (channel.md): lifecycle, protection, capacity, who may register, first to register wins."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

import pytest

from domain.application import CommandResult
from domain.conflicts import PARTNER_VS_PARTNER, conflict_id
from domain.errors import (
    AlreadyExists,
    CapacityExceeded,
    ChannelConflictBlocks,
    InvalidTransition,
    NotFound,
    PartnerCannotRegister,
    ReasonRequired,
    UnknownPartner,
    ValidationFailed,
)
from domain.registration import REJECTION_REASONS, DealRegistration
from tests.unit.conftest import (
    ADMIN,
    MINH_PHAT_EN,
    MINH_PHAT_VI,
    SMALL_CAPACITY,
    T0,
    World,
    at,
    event_names,
    state_of,
)

PROTECTION = timedelta(days=90)
EXTENSION = timedelta(days=30)


def submitted(registration_id: str = "R-1", when: datetime = T0, **changes: Any) -> DealRegistration:
    fields: dict[str, Any] = {
        "registration_id": registration_id,
        "partner_id": "P-1",
        "customer": dict(MINH_PHAT_VI, domain="minhphat.vn", tax_id="0101234567"),
        "estimated_value_minor": 360_000_000,
        "currency": "VND",
        "products": ["software", "services"],
        "expected_close_on": date(2026, 3, 31),
        "submitted_at": when,
        "conflicts_with": [],
        "actor": "sales@acme.vn",
    }
    fields.update(changes)
    return DealRegistration.submit(**fields)


def approved(registration_id: str = "R-1", when: datetime = T0) -> DealRegistration:
    registration = submitted(registration_id, when)
    registration.approve(actor=ADMIN, at=when + timedelta(days=1), protection_days=90, blocking=[])
    return registration


def blocker(cid: str = "C-1") -> dict[str, Any]:
    return {
        "conflict_id": cid,
        "kind": PARTNER_VS_PARTNER,
        "registration_id": "R-0",
        "partner_id": "P-0",
        "status": "approved",
        "evidence": {"rule": "name", "left": "minh phat", "right": "minh phat", "score": 1.0},
    }


# ------------------------------------------------------------------ the aggregate: submission


def test_submit_records_submitted() -> None:
    registration = submitted()
    events = registration.collect_events()
    assert event_names(events) == ["Submitted"]
    assert events[0].partner_id == "P-1"
    assert registration.status == "submitted"
    assert registration.is_open
    assert not registration.is_protected_at(at(1))
    assert registration.customer == {
        "name": "Công ty TNHH Minh Phát",
        "domain": "minhphat.vn",
        "tax_id": "0101234567",
        "country": "VN",
    }


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"customer": {"name": " ", "country": "VN"}}, ValidationFailed, "customer.name is required"),
        ({"customer": {"name": "X", "country": "Vietnam"}}, ValidationFailed, "customer.country 'VIETNAM'"),
        ({"estimated_value_minor": -1}, ValidationFailed, "estimated_value_minor must be ≥ 0"),
        ({"estimated_value_minor": 1.5}, ValidationFailed, "must be an integer number of minor units"),
        ({"currency": "vnd"}, ValidationFailed, "must be an ISO 4217 code"),
        ({"products": ["software", ""]}, ValidationFailed, r"products\[\] is required"),
        ({"actor": ""}, ValidationFailed, "actor is required"),
        ({"registration_id": ""}, ValidationFailed, "registration_id is required"),
        ({"submitted_at": datetime(2026, 1, 5)}, ValueError, "naive datetime"),
    ],
)
def test_submit_refuses_invalid_data(changes: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        submitted(**changes)


# ------------------------------------------------------------------ approval and protection


def test_approval_protects_for_the_given_days_from_approval() -> None:
    registration = submitted()
    registration.collect_events()
    registration.approve(actor=ADMIN, at=at(1), protection_days=90, blocking=[])

    events = registration.collect_events()
    assert event_names(events) == ["Approved"]
    assert events[0].protected_until == at(1) + PROTECTION
    assert registration.status == "approved"
    assert registration.approved_at == at(1)
    assert registration.protected_until == at(91)
    assert not registration.is_protected_at(at(1) - timedelta(microseconds=1))
    assert registration.is_protected_at(at(1))
    assert registration.is_protected_at(at(91) - timedelta(microseconds=1))
    assert not registration.is_protected_at(at(91))


def test_approval_needs_a_submitted_registration_and_an_actor() -> None:
    registration = approved()
    registration.collect_events()
    with pytest.raises(
        InvalidTransition, match=r"cannot approve registration R-1: it is approved \(allowed from submitted\)"
    ):
        registration.approve(actor=ADMIN, at=at(2), protection_days=90, blocking=[])
    pending = submitted("R-2")
    pending.collect_events()
    with pytest.raises(ValidationFailed, match="actor is required"):
        pending.approve(actor="", at=at(2), protection_days=90, blocking=[])
    assert pending.collect_events() == []
    assert pending.status == "submitted"


def test_an_unresolved_conflict_blocks_approval() -> None:
    registration = submitted()
    registration.collect_events()
    with pytest.raises(
        ChannelConflictBlocks, match=r"registered by partner P-0 \(R-0, approved\) earlier; resolve conflict C-1 first"
    ) as caught:
        registration.approve(actor=ADMIN, at=at(1), protection_days=90, blocking=[blocker("C-1"), blocker("C-2")])
    assert caught.value.details["conflicts"] == ["C-1", "C-2"]
    assert caught.value.code == "channel_conflict"
    assert registration.collect_events() == []
    assert registration.status == "submitted"


def test_a_conflict_resolved_in_its_favour_or_dismissed_no_longer_blocks() -> None:
    registration = submitted()
    registration.resolve_conflict(
        conflict_id="C-1", kind=PARTNER_VS_PARTNER, winner="R-1", actor=ADMIN, reason="first to call", at=at(1)
    )
    registration.dismiss_conflict(
        conflict_id="C-2", kind=PARTNER_VS_PARTNER, actor=ADMIN, reason="false match", at=at(1)
    )
    registration.approve(actor=ADMIN, at=at(2), protection_days=90, blocking=[blocker("C-1"), blocker("C-2")])
    assert registration.status == "approved"
    assert registration.resolutions == {"C-1": "R-1", "C-2": "dismissed"}


def test_a_conflict_resolved_against_it_keeps_blocking() -> None:
    registration = submitted()
    registration.resolve_conflict(
        conflict_id="C-1", kind=PARTNER_VS_PARTNER, winner="R-0", actor=ADMIN, reason="R-0 was first", at=at(1)
    )
    registration.collect_events()
    with pytest.raises(ChannelConflictBlocks, match="conflict C-1 was resolved in favour of R-0"):
        registration.approve(actor=ADMIN, at=at(2), protection_days=90, blocking=[blocker("C-1")])
    assert registration.collect_events() == []


def test_losing_a_conflict_ends_the_protection_at_the_decision() -> None:
    registration = approved()
    registration.resolve_conflict(
        conflict_id="C-9", kind="direct_vs_partner", winner="direct", actor=ADMIN, reason="direct deal", at=at(10)
    )
    assert registration.protected_until == at(10)
    assert not registration.is_protected_at(at(10))
    kept = approved("R-2")
    kept.resolve_conflict(
        conflict_id="C-8", kind="direct_vs_partner", winner="P-1", actor=ADMIN, reason="partner first", at=at(10)
    )
    assert kept.protected_until == at(91)


def test_a_conflict_is_decided_once() -> None:
    registration = submitted()
    registration.dismiss_conflict(conflict_id="C-1", kind=PARTNER_VS_PARTNER, actor=ADMIN, reason="no match", at=at(1))
    registration.collect_events()
    with pytest.raises(InvalidTransition, match=r"conflict C-1 is already decided \(dismissed\)"):
        registration.resolve_conflict(
            conflict_id="C-1", kind=PARTNER_VS_PARTNER, winner="R-1", actor=ADMIN, reason="r", at=at(2)
        )
    with pytest.raises(InvalidTransition, match="already decided"):
        registration.dismiss_conflict(conflict_id="C-1", kind=PARTNER_VS_PARTNER, actor=ADMIN, reason="r", at=at(2))
    with pytest.raises(ReasonRequired, match="a reason is required to resolve a conflict"):
        registration.resolve_conflict(
            conflict_id="C-2", kind=PARTNER_VS_PARTNER, winner="R-1", actor=ADMIN, reason="", at=at(2)
        )
    with pytest.raises(ReasonRequired, match="a reason is required to dismiss a conflict"):
        registration.dismiss_conflict(conflict_id="C-2", kind=PARTNER_VS_PARTNER, actor=ADMIN, reason=" ", at=at(2))
    assert registration.collect_events() == []


# ------------------------------------------------------------------ extension


def test_protection_extends_once_by_the_extension() -> None:
    registration = approved()
    registration.collect_events()
    registration.extend_protection(actor=ADMIN, reason="customer budget cycle", at=at(80), extension_days=30)
    events = registration.collect_events()
    assert event_names(events) == ["ProtectionExtended"]
    assert (events[0].previous_until, events[0].protected_until) == (at(91), at(121))
    assert registration.extended
    assert registration.is_protected_at(at(120))

    with pytest.raises(InvalidTransition, match="the protection of R-1 was already extended once"):
        registration.extend_protection(actor=ADMIN, reason="again", at=at(100), extension_days=30)
    assert registration.collect_events() == []
    assert registration.protected_until == at(121)


def test_extension_refusals() -> None:
    pending = submitted()
    with pytest.raises(InvalidTransition, match="cannot extend the protection of registration R-1: it is submitted"):
        pending.extend_protection(actor=ADMIN, reason="r", at=at(1), extension_days=30)
    registration = approved()
    registration.collect_events()
    with pytest.raises(InvalidTransition, match="the protection of R-1 has already ended"):
        registration.extend_protection(actor=ADMIN, reason="late", at=at(91), extension_days=30)
    with pytest.raises(ReasonRequired, match="a reason is required to extend a protection"):
        registration.extend_protection(actor=ADMIN, reason="", at=at(10), extension_days=30)
    assert registration.collect_events() == []
    assert not registration.extended


# ------------------------------------------------------------------ outcomes


@pytest.mark.parametrize("code", [c for c in REJECTION_REASONS if c != "other"])
def test_reject_with_a_standard_reason(code: str) -> None:
    registration = submitted()
    registration.collect_events()
    registration.reject(actor=ADMIN, reason_code=code, at=at(1))
    events = registration.collect_events()
    assert event_names(events) == ["Rejected"]
    assert (events[0].reason_code, events[0].reason) == (code, code)
    assert registration.status == "rejected"
    assert registration.closed_at == at(1)
    assert not registration.is_open


def test_reject_with_other_needs_a_text() -> None:
    registration = submitted()
    registration.collect_events()
    with pytest.raises(ReasonRequired, match="a reason is required to reject with reason 'other'"):
        registration.reject(actor=ADMIN, reason_code="other", at=at(1))
    with pytest.raises(ReasonRequired):
        registration.reject(actor=ADMIN, reason_code="other", at=at(1), reason="  ")
    assert registration.collect_events() == []
    registration.reject(actor=ADMIN, reason_code="other", at=at(1), reason="customer went bankrupt")
    assert registration.collect_events()[0].reason == "customer went bankrupt"


def test_reject_refuses_an_unknown_reason() -> None:
    registration = submitted()
    with pytest.raises(
        ValidationFailed, match="unknown rejection reason 'spam'; use one of duplicate, existing_customer"
    ):
        registration.reject(actor=ADMIN, reason_code="spam", at=at(1))
    assert registration.status == "submitted"


def test_an_approved_registration_cannot_be_rejected() -> None:
    with pytest.raises(InvalidTransition, match="cannot reject registration R-1: it is approved"):
        approved().reject(actor=ADMIN, reason_code="duplicate", at=at(2))


def test_won_lost_expired_need_an_approved_registration() -> None:
    pending = submitted()
    with pytest.raises(InvalidTransition, match="cannot mark as won registration R-1: it is submitted"):
        pending.mark_won(sale_id="S-1", at=at(1))
    with pytest.raises(InvalidTransition, match="cannot mark as lost registration R-1: it is submitted"):
        pending.mark_lost(actor=ADMIN, reason="r", at=at(1))
    with pytest.raises(InvalidTransition, match="cannot expire registration R-1: it is submitted"):
        pending.expire(at=at(200))


def test_won() -> None:
    registration = approved()
    registration.collect_events()
    registration.mark_won(sale_id="S-1", at=at(30))
    assert event_names(registration.collect_events()) == ["Won"]
    assert (registration.status, registration.won_sale_id, registration.closed_at) == ("won", "S-1", at(30))
    assert not registration.is_protected_at(at(31))


def test_lost_needs_a_reason() -> None:
    registration = approved()
    registration.collect_events()
    with pytest.raises(ReasonRequired, match="a reason is required to mark a registration lost"):
        registration.mark_lost(actor=ADMIN, reason="", at=at(30))
    assert registration.collect_events() == []
    registration.mark_lost(actor=ADMIN, reason="chose a competitor", at=at(30))
    assert registration.status == "lost"


def test_expire_only_when_the_protection_has_ended() -> None:
    registration = approved()
    registration.collect_events()
    with pytest.raises(InvalidTransition, match="registration R-1 is protected until 2026-04-06T09:00:00"):
        registration.expire(at=at(91) - timedelta(seconds=1))
    registration.expire(at=at(95))
    events = registration.collect_events()
    assert event_names(events) == ["Expired"]
    assert events[0].at == at(91)  # it expired when the protection ended
    assert registration.closed_at == at(91)


@pytest.mark.parametrize("status", ["submitted", "approved"])
def test_withdraw_while_open(status: str) -> None:
    registration = submitted() if status == "submitted" else approved()
    registration.collect_events()
    registration.withdraw(actor="sales@acme.vn", at=at(5), reason="customer postponed")
    assert event_names(registration.collect_events()) == ["Withdrawn"]
    assert registration.status == "withdrawn"
    assert not registration.is_protected_at(at(6))


def _close(registration: DealRegistration, outcome: str) -> None:
    if outcome == "rejected":
        registration.reject(actor=ADMIN, reason_code="duplicate", at=at(1))
        return
    if outcome == "withdrawn":
        registration.withdraw(actor=ADMIN, at=at(1))
        return
    registration.approve(actor=ADMIN, at=at(1), protection_days=90, blocking=[])
    if outcome == "won":
        registration.mark_won(sale_id="S-1", at=at(2))
    elif outcome == "lost":
        registration.mark_lost(actor=ADMIN, reason="r", at=at(2))
    else:
        registration.expire(at=at(100))


@pytest.mark.parametrize("outcome", ["rejected", "withdrawn", "won", "lost", "expired"])
def test_a_closed_registration_never_reopens(outcome: str) -> None:
    registration = submitted()
    _close(registration, outcome)
    registration.collect_events()
    before = state_of(registration)
    commands = [
        lambda: registration.approve(actor=ADMIN, at=at(200), protection_days=90, blocking=[]),
        lambda: registration.reject(actor=ADMIN, reason_code="duplicate", at=at(200)),
        lambda: registration.extend_protection(actor=ADMIN, reason="r", at=at(200), extension_days=30),
        lambda: registration.mark_won(sale_id="S-2", at=at(200)),
        lambda: registration.mark_lost(actor=ADMIN, reason="r", at=at(200)),
        lambda: registration.expire(at=at(400)),
        lambda: registration.withdraw(actor=ADMIN, at=at(200)),
    ]
    for command in commands:
        with pytest.raises(InvalidTransition, match=f"it is {outcome}"):
            command()
    assert registration.collect_events() == []
    assert state_of(registration) == before
    assert not registration.is_open


# ------------------------------------------------------------------ through the application: who may register


def test_submit_and_approve_through_the_application(unit_world: World) -> None:
    app = unit_world.app
    unit_world.active("P-1")

    result = unit_world.submit("R-1", "P-1", MINH_PHAT_VI, when=at(1))
    assert result.events == ["prm.registration.submitted.v1", "prm.partner.registration_opened.v1"]
    assert result.details == {"conflicts": []}
    assert result.aggregate_id == DealRegistration.id_for("R-1")
    assert app.partner("P-1").open_registrations == ["R-1"]

    approval = app.approve_registration("R-1", actor=ADMIN, at=at(2))
    assert approval.events == ["prm.registration.approved.v1"]
    registration = app.registration("R-1")
    assert registration.protected_until == at(2) + PROTECTION
    assert registration.submitted_at == at(1)


def test_the_protection_length_is_a_setting(unit_world: World) -> None:
    app = unit_world.app
    unit_world.active("P-1")
    app.change_settings(
        {"protection_days": 60, "protection_extension_days": 15}, actor=ADMIN, reason="shorter cycle", at=T0
    )
    unit_world.submit("R-1", "P-1", when=at(1))
    app.approve_registration("R-1", actor=ADMIN, at=at(2))
    assert app.registration("R-1").protected_until == at(62)
    app.extend_protection("R-1", actor=ADMIN, reason="budget", at=at(3))
    assert app.registration("R-1").protected_until == at(77)


def test_submission_refusals(unit_world: World) -> None:
    app = unit_world.app
    unit_world.active("P-1")
    unit_world.submit("R-1", "P-1", when=at(1))
    position = app.max_position()
    with pytest.raises(AlreadyExists, match="registration R-1 already exists"):
        unit_world.submit("R-1", "P-1", when=at(2))
    with pytest.raises(UnknownPartner, match="unknown partner 'P-404'"):
        unit_world.submit("R-2", "P-404", when=at(2))
    with pytest.raises(ValidationFailed, match=r"customer\.name is required"):
        unit_world.submit("R-2", "P-1", {"name": "", "country": "VN"}, when=at(2))
    with pytest.raises(NotFound, match="unknown registration 'R-404'"):
        app.approve_registration("R-404", actor=ADMIN, at=at(2))
    assert app.max_position() == position
    assert app.partner("P-1").open_registrations == ["R-1"]


def test_a_suspended_partner_cannot_register(unit_world: World) -> None:
    app = unit_world.app
    unit_world.active("P-1")
    app.suspend_partner("P-1", actor=ADMIN, reason="audit", at=at(1))
    position = app.max_position()
    with pytest.raises(PartnerCannotRegister, match="partner P-1 is suspended and cannot register new deals"):
        unit_world.submit("R-1", "P-1", when=at(2))
    assert app.max_position() == position
    with pytest.raises(NotFound):
        app.registration("R-1")
    app.reinstate_partner("P-1", actor=ADMIN, at=at(3))
    unit_world.submit("R-1", "P-1", when=at(4))


@pytest.mark.parametrize("status", ["applied", "onboarding", "terminated", "rejected"])
def test_only_an_active_partner_can_register(unit_world: World, status: str) -> None:
    app = unit_world.app
    if status == "terminated":
        unit_world.active("P-1")
        app.terminate_partner("P-1", actor=ADMIN, reason="breach", at=at(1))
    else:
        unit_world.applied("P-1")
        if status == "onboarding":
            app.approve_partner("P-1", actor=ADMIN, at=at(1))
        elif status == "rejected":
            app.reject_partner("P-1", actor=ADMIN, reason="no", at=at(1))
    with pytest.raises(PartnerCannotRegister, match=f"partner P-1 is {status} and cannot register"):
        unit_world.submit("R-1", "P-1", when=at(2))


def test_a_partner_without_a_contract_in_force_cannot_register(unit_world: World) -> None:
    app = unit_world.app
    unit_world.active("P-1", ends_on=date(2026, 3, 31))
    unit_world.submit("R-1", "P-1", when=datetime.fromisoformat("2026-03-31T23:59:59+00:00"))
    with pytest.raises(PartnerCannotRegister, match="partner P-1 has no contract in force on 2026-04-01"):
        unit_world.submit("R-2", "P-1", when=datetime.fromisoformat("2026-04-01T00:00:00+00:00"))
    unit_world.sign("P-1", "C-2", when=at(80), starts_on=date(2026, 4, 1), ends_on=date(2026, 12, 31))
    unit_world.submit("R-2", "P-1", when=datetime.fromisoformat("2026-04-01T00:00:00+00:00"))
    assert app.partner("P-1").open_registrations == ["R-1", "R-2"]


def test_a_contract_not_yet_started_or_terminated_does_not_count(unit_world: World) -> None:
    app = unit_world.app
    unit_world.active("P-1", starts_on=date(2026, 2, 1))
    with pytest.raises(PartnerCannotRegister, match="no contract in force on 2026-01-06"):
        unit_world.submit("R-1", "P-1", when=at(1))
    unit_world.submit("R-1", "P-1", when=datetime.fromisoformat("2026-02-01T00:00:00+00:00"))
    app.terminate_contract("C-P-1", actor=ADMIN, reason="breach", effective_on=date(2026, 3, 1), at=at(40))
    with pytest.raises(PartnerCannotRegister, match="no contract in force on 2026-03-01"):
        unit_world.submit("R-2", "P-1", when=datetime.fromisoformat("2026-03-01T08:00:00+00:00"))


def test_an_auto_renewing_contract_keeps_the_partner_registering(unit_world: World) -> None:
    unit_world.active("P-1", auto_renew=True)
    result = unit_world.submit("R-1", "P-1", when=datetime.fromisoformat("2028-06-01T00:00:00+00:00"))
    assert result.events[0] == "prm.registration.submitted.v1"


# ------------------------------------------------------------------ capacity


def test_capacity_per_tier_with_small_caps(unit_world: World) -> None:
    app = unit_world.app
    unit_world.set_capacity(SMALL_CAPACITY)
    unit_world.active("P-1")
    unit_world.submit("R-1", "P-1", when=at(1))
    unit_world.submit("R-2", "P-1", when=at(1))
    position = app.max_position()

    with pytest.raises(
        CapacityExceeded, match="partner P-1 already has 2 open registrations, the cap for tier registered is 2"
    ) as caught:
        unit_world.submit("R-3", "P-1", when=at(2))
    assert caught.value.details == {"partner_id": "P-1", "open": 2, "capacity": 2}
    assert app.max_position() == position
    with pytest.raises(NotFound):
        app.registration("R-3")

    app.withdraw_registration("R-1", actor="sales@p-1.vn", at=at(3))  # a slot frees up
    unit_world.submit("R-3", "P-1", when=at(4))

    app.override_tier("P-1", tier="silver", actor=ADMIN, reason="strategic", effective_at=at(5))
    with pytest.raises(CapacityExceeded, match="the cap for tier registered is 2"):
        unit_world.submit("R-4", "P-1", when=at(5) - timedelta(seconds=1))  # the tier in force at submission
    unit_world.submit("R-4", "P-1", when=at(5))
    with pytest.raises(CapacityExceeded, match="already has 3 open registrations, the cap for tier silver is 3"):
        unit_world.submit("R-5", "P-1", when=at(6))
    assert app.partner("P-1").open_registrations == ["R-2", "R-3", "R-4"]


def test_every_closing_frees_a_slot(unit_world: World) -> None:
    app = unit_world.app
    unit_world.set_capacity({"registered": 1, "silver": 1, "gold": 1, "platinum": 1})
    unit_world.active("P-1")
    closings = [
        lambda rid: app.reject_registration(rid, actor=ADMIN, reason_code="duplicate", at=at(2)),
        lambda rid: app.withdraw_registration(rid, actor=ADMIN, at=at(2)),
        lambda rid: (
            app.approve_registration(rid, actor=ADMIN, at=at(2)),
            app.mark_registration_lost(rid, actor=ADMIN, reason="competitor", at=at(3)),
        ),
    ]
    for index, close in enumerate(closings):
        registration_id = f"R-{index}"
        unit_world.submit(registration_id, "P-1", when=at(1))
        with pytest.raises(CapacityExceeded):
            unit_world.submit(f"R-extra-{index}", "P-1", when=at(1))
        close(registration_id)
        assert app.partner("P-1").open_registrations == []


def test_capacity_at_the_default_of_50(unit_world: World) -> None:
    app = unit_world.app
    unit_world.active("P-1")
    for index in range(50):
        unit_world.submit(f"R-{index:02d}", "P-1", {"name": f"Customer {index}", "country": "VN"}, when=at(1))
    with pytest.raises(CapacityExceeded, match="already has 50 open registrations, the cap for tier registered is 50"):
        unit_world.submit("R-50", "P-1", when=at(1))
    assert len(app.partner("P-1").open_registrations) == 50


# ------------------------------------------------------------------ the protection in time


def test_extension_through_the_application_once_only(unit_world: World) -> None:
    app = unit_world.app
    unit_world.active("P-1")
    unit_world.submit("R-1", "P-1", when=at(1))
    app.approve_registration("R-1", actor=ADMIN, at=at(2))
    result = app.extend_protection("R-1", actor=ADMIN, reason="budget cycle", at=at(50))
    assert result.events == ["prm.registration.protection_extended.v1"]
    assert app.registration("R-1").protected_until == at(2) + PROTECTION + EXTENSION
    with pytest.raises(InvalidTransition, match="already extended once"):
        app.extend_protection("R-1", actor=ADMIN, reason="again", at=at(60))


def test_expire_registrations_closes_the_ones_whose_protection_ended(unit_world: World) -> None:
    app = unit_world.app
    unit_world.active("P-1")
    for registration_id in ("R-plain", "R-extended", "R-lost", "R-pending"):
        unit_world.submit(registration_id, "P-1", {"name": registration_id, "country": "VN"}, when=at(1))
    for registration_id in ("R-plain", "R-extended", "R-lost"):
        app.approve_registration(registration_id, actor=ADMIN, at=at(2))
    app.extend_protection("R-extended", actor=ADMIN, reason="budget", at=at(10))
    app.mark_registration_lost("R-lost", actor=ADMIN, reason="competitor", at=at(20))

    assert app.expire_registrations(at=at(92) - timedelta(seconds=1)) == []

    results = app.expire_registrations(at=at(92))
    assert [r.business_id for r in results] == ["R-plain"]
    assert results[0].events == ["prm.registration.expired.v1", "prm.partner.registration_closed.v1"]
    assert app.registration("R-plain").status == "expired"
    assert app.registration("R-plain").closed_at == at(92)
    assert app.expire_registrations(at=at(100)) == []  # idempotent

    later = app.expire_registrations(at=at(200))
    assert [r.business_id for r in later] == ["R-extended"]
    assert app.registration("R-extended").closed_at == at(122)
    assert app.registration("R-pending").status == "submitted"  # a pending registration never expires
    assert app.registration("R-lost").status == "lost"
    assert app.partner("P-1").open_registrations == ["R-pending"]


def test_rejections_through_the_application(unit_world: World) -> None:
    app = unit_world.app
    unit_world.active("P-1")
    unit_world.submit("R-1", "P-1", when=at(1))
    with pytest.raises(ReasonRequired, match="reject with reason 'other'"):
        app.reject_registration("R-1", actor=ADMIN, reason_code="other", at=at(2))
    with pytest.raises(ValidationFailed, match="unknown rejection reason"):
        app.reject_registration("R-1", actor=ADMIN, reason_code="nope", at=at(2))
    result = app.reject_registration("R-1", actor=ADMIN, reason_code="other", reason="shell company", at=at(2))
    assert result.events == ["prm.registration.rejected.v1", "prm.partner.registration_closed.v1"]
    assert app.partner("P-1").open_registrations == []
    with pytest.raises(InvalidTransition, match="it is rejected"):
        app.withdraw_registration("R-1", actor=ADMIN, at=at(3))


# ------------------------------------------------------------------ first to register wins


@pytest.fixture
def two_partners(unit_world: World) -> World:
    unit_world.active("P-A")
    unit_world.active("P-B")
    unit_world.active("P-C")
    return unit_world


def the_conflict(result: CommandResult) -> str:
    assert len(result.details["conflicts"]) == 1
    conflict: str = result.details["conflicts"][0]
    return conflict


@pytest.mark.parametrize(
    ("first", "second", "rule"),
    [
        (MINH_PHAT_VI, MINH_PHAT_EN, "name"),
        (
            {"name": "Minh Phat", "domain": "https://www.MinhPhat.vn:443/lien-he", "country": "VN"},
            {"name": "MP Trading", "domain": "minhphat.vn", "country": "SG"},
            "domain",
        ),
        (
            {"name": "Minh Phat", "tax_id": "0101234567", "country": "VN"},
            {"name": "Chi nhanh Da Nang", "tax_id": "0101234567-001", "country": "VN"},
            "tax_id",
        ),
    ],
)
def test_a_later_registration_of_the_same_account_carries_a_conflict(
    two_partners: World, first: dict[str, Any], second: dict[str, Any], rule: str
) -> None:
    app = two_partners.app
    two_partners.submit("R-A", "P-A", first, when=at(1))
    result = two_partners.submit("R-B", "P-B", second, when=at(2))

    cid = the_conflict(result)
    assert cid == conflict_id(PARTNER_VS_PARTNER, "R-A", "R-B")
    registration = app.registration("R-B")
    assert registration.status == "submitted"
    [conflict] = registration.conflicts_with
    assert conflict["conflict_id"] == cid
    assert (conflict["registration_id"], conflict["partner_id"], conflict["status"]) == ("R-A", "P-A", "submitted")
    assert conflict["evidence"]["rule"] == rule

    with pytest.raises(
        ChannelConflictBlocks,
        match=f"registered by partner P-A \\(R-A, submitted\\) earlier; resolve conflict {cid} first",
    ):
        app.approve_registration("R-B", actor=ADMIN, at=at(3))
    assert app.registration("R-B").status == "submitted"
    app.approve_registration("R-A", actor=ADMIN, at=at(3))  # the earlier one is not blocked by the later one


def test_no_conflict_for_the_same_partner_or_another_account(two_partners: World) -> None:
    two_partners.submit("R-A1", "P-A", MINH_PHAT_VI, when=at(1))
    assert two_partners.submit("R-A2", "P-A", MINH_PHAT_EN, when=at(2)).details == {"conflicts": []}
    other_country = dict(MINH_PHAT_EN, country="TH")
    assert two_partners.submit("R-B1", "P-B", other_country, when=at(3)).details == {"conflicts": []}
    free_mail = [
        {"name": "Hoa Binh", "domain": "gmail.com", "country": "VN"},
        {"name": "Song Hong", "domain": "gmail.com", "country": "VN"},
    ]
    two_partners.submit("R-A3", "P-A", free_mail[0], when=at(4))
    assert two_partners.submit("R-B2", "P-B", free_mail[1], when=at(5)).details == {"conflicts": []}


def test_an_approved_and_protected_registration_blocks_later_ones(two_partners: World) -> None:
    app = two_partners.app
    two_partners.submit("R-A", "P-A", MINH_PHAT_VI, when=at(1))
    app.approve_registration("R-A", actor=ADMIN, at=at(2))
    result = two_partners.submit("R-B", "P-B", MINH_PHAT_EN, when=at(10))
    assert app.registration("R-B").conflicts_with[0]["status"] == "approved"
    with pytest.raises(ChannelConflictBlocks, match=r"\(R-A, approved\)"):
        app.approve_registration("R-B", actor=ADMIN, at=at(11))
    # once the first protection has ended, the later registration can be approved
    app.approve_registration("R-B", actor=ADMIN, at=at(92))
    assert app.registration("R-B").status == "approved"
    assert the_conflict(result)


def test_no_conflict_once_the_first_protection_has_ended(two_partners: World) -> None:
    app = two_partners.app
    two_partners.submit("R-A", "P-A", MINH_PHAT_VI, when=at(1))
    app.approve_registration("R-A", actor=ADMIN, at=at(2))
    assert two_partners.submit("R-B", "P-B", MINH_PHAT_EN, when=at(92)).details == {"conflicts": []}
    app.approve_registration("R-B", actor=ADMIN, at=at(93))


@pytest.mark.parametrize("closing", ["withdraw", "reject"])
def test_the_later_registration_can_be_approved_once_the_first_is_closed(two_partners: World, closing: str) -> None:
    app = two_partners.app
    two_partners.submit("R-A", "P-A", MINH_PHAT_VI, when=at(1))
    if closing == "withdraw":
        app.approve_registration("R-A", actor=ADMIN, at=at(2))
    two_partners.submit("R-B", "P-B", MINH_PHAT_EN, when=at(3))
    with pytest.raises(ChannelConflictBlocks):
        app.approve_registration("R-B", actor=ADMIN, at=at(4))
    if closing == "withdraw":
        app.withdraw_registration("R-A", actor="sales@p-a.vn", at=at(5))
    else:
        app.reject_registration("R-A", actor=ADMIN, reason_code="insufficient_information", at=at(5))
    app.approve_registration("R-B", actor=ADMIN, at=at(6))
    assert app.registration("R-B").status == "approved"


def test_resolving_the_conflict_in_favour_of_the_later_registration(two_partners: World) -> None:
    app = two_partners.app
    two_partners.submit("R-A", "P-A", MINH_PHAT_VI, when=at(1))
    app.approve_registration("R-A", actor=ADMIN, at=at(2))
    cid = the_conflict(two_partners.submit("R-B", "P-B", MINH_PHAT_EN, when=at(3)))

    result = app.resolve_conflict(
        conflict_id=cid,
        kind=PARTNER_VS_PARTNER,
        registration_id="R-B",
        other_registration_id="R-A",
        winner="R-B",
        actor=ADMIN,
        reason="customer chose P-B",
        at=at(4),
    )
    assert result.events == ["prm.registration.conflict_resolved.v1", "prm.registration.conflict_resolved.v1"]
    loser = app.registration("R-A")
    assert loser.resolutions == {cid: "R-B"}
    assert loser.protected_until == at(4)  # the loser loses its protection
    assert not loser.is_protected_at(at(5))

    app.approve_registration("R-B", actor=ADMIN, at=at(5))
    assert app.registration("R-B").is_protected_at(at(6))
    # a third partner now conflicts with the winner, not with the loser
    third = two_partners.submit("R-C", "P-C", MINH_PHAT_VI, when=at(6))
    assert [c["registration_id"] for c in app.registration("R-C").conflicts_with] == ["R-B"]
    assert the_conflict(third) == conflict_id(PARTNER_VS_PARTNER, "R-B", "R-C")


def test_resolving_the_conflict_in_favour_of_the_first_keeps_the_later_blocked(two_partners: World) -> None:
    app = two_partners.app
    two_partners.submit("R-A", "P-A", MINH_PHAT_VI, when=at(1))
    cid = the_conflict(two_partners.submit("R-B", "P-B", MINH_PHAT_EN, when=at(2)))
    app.resolve_conflict(
        conflict_id=cid,
        kind=PARTNER_VS_PARTNER,
        registration_id="R-B",
        other_registration_id="R-A",
        winner="R-A",
        actor=ADMIN,
        reason="R-A registered first",
        at=at(3),
    )
    with pytest.raises(ChannelConflictBlocks, match=f"conflict {cid} was resolved in favour of R-A"):
        app.approve_registration("R-B", actor=ADMIN, at=at(4))
    app.approve_registration("R-A", actor=ADMIN, at=at(4))
    app.reject_registration("R-B", actor=ADMIN, reason_code="duplicate", at=at(5))


def test_dismissing_the_conflict_unblocks_the_later_registration(two_partners: World) -> None:
    app = two_partners.app
    two_partners.submit("R-A", "P-A", MINH_PHAT_VI, when=at(1))
    cid = the_conflict(two_partners.submit("R-B", "P-B", MINH_PHAT_EN, when=at(2)))
    result = app.dismiss_conflict(
        conflict_id=cid, kind=PARTNER_VS_PARTNER, registration_id="R-B", actor=ADMIN, reason="two sites", at=at(3)
    )
    assert result.events == ["prm.registration.conflict_dismissed.v1"]
    app.approve_registration("R-B", actor=ADMIN, at=at(4))
    assert app.registration("R-B").resolutions == {cid: "dismissed"}


def test_after_a_dismissal_the_later_approved_registration_does_not_block_the_earlier(two_partners: World) -> None:
    app = two_partners.app
    two_partners.submit("R-A", "P-A", MINH_PHAT_VI, when=at(1))
    cid = the_conflict(two_partners.submit("R-B", "P-B", MINH_PHAT_EN, when=at(2)))
    app.dismiss_conflict(
        conflict_id=cid, kind=PARTNER_VS_PARTNER, registration_id="R-B", actor=ADMIN, reason="two sites", at=at(3)
    )
    app.approve_registration("R-B", actor=ADMIN, at=at(4))
    app.approve_registration("R-A", actor=ADMIN, at=at(5))  # the same pair never conflicts twice
    assert app.registration("R-A").status == "approved"


def test_a_dismissal_recorded_on_the_earlier_registration_also_clears_the_pair(two_partners: World) -> None:
    app = two_partners.app
    two_partners.submit("R-A", "P-A", MINH_PHAT_VI, when=at(1))
    cid = the_conflict(two_partners.submit("R-B", "P-B", MINH_PHAT_EN, when=at(2)))
    app.dismiss_conflict(
        conflict_id=cid, kind=PARTNER_VS_PARTNER, registration_id="R-A", actor=ADMIN, reason="two sites", at=at(3)
    )
    app.approve_registration("R-B", actor=ADMIN, at=at(4))
    assert app.registration("R-B").status == "approved"


def test_the_loser_of_a_resolved_conflict_stays_blocked_by_the_winner(two_partners: World) -> None:
    app = two_partners.app
    two_partners.submit("R-A", "P-A", MINH_PHAT_VI, when=at(1))
    cid = the_conflict(two_partners.submit("R-B", "P-B", MINH_PHAT_EN, when=at(2)))
    app.resolve_conflict(
        conflict_id=cid,
        kind=PARTNER_VS_PARTNER,
        registration_id="R-B",
        other_registration_id="R-A",
        winner="R-B",
        actor=ADMIN,
        reason="customer chose P-B",
        at=at(3),
    )
    app.approve_registration("R-B", actor=ADMIN, at=at(4))
    with pytest.raises(ChannelConflictBlocks, match=r"\(R-B, approved\)"):
        app.approve_registration("R-A", actor=ADMIN, at=at(5))


def test_a_conflict_between_a_registration_and_itself_is_refused(two_partners: World) -> None:
    app = two_partners.app
    two_partners.submit("R-A", "P-A", MINH_PHAT_VI, when=at(1))
    with pytest.raises(ValidationFailed):
        app.resolve_conflict(
            conflict_id="C-x",
            kind=PARTNER_VS_PARTNER,
            registration_id="R-A",
            other_registration_id="R-A",
            winner="R-A",
            actor=ADMIN,
            reason="r",
            at=at(2),
        )


def test_resolve_conflict_refusals(two_partners: World) -> None:
    app = two_partners.app
    two_partners.submit("R-A", "P-A", MINH_PHAT_VI, when=at(1))
    cid = the_conflict(two_partners.submit("R-B", "P-B", MINH_PHAT_EN, when=at(2)))
    common: dict[str, Any] = {"conflict_id": cid, "registration_id": "R-B", "actor": ADMIN, "reason": "r", "at": at(3)}
    with pytest.raises(ValidationFailed, match="unknown conflict kind 'feud'"):
        app.resolve_conflict(kind="feud", other_registration_id="R-A", winner="R-A", **common)
    with pytest.raises(ValidationFailed, match="a partner-vs-partner conflict names both registrations"):
        app.resolve_conflict(kind=PARTNER_VS_PARTNER, winner="R-A", **common)
    with pytest.raises(ValidationFailed, match="the winner must be one of the two registrations"):
        app.resolve_conflict(kind=PARTNER_VS_PARTNER, other_registration_id="R-A", winner="P-A", **common)
    with pytest.raises(NotFound, match="unknown registration 'R-404'"):
        app.resolve_conflict(kind=PARTNER_VS_PARTNER, other_registration_id="R-404", winner="R-B", **common)
    assert app.registration("R-A").resolutions == {}
    assert app.registration("R-B").resolutions == {}


def test_a_pending_first_registration_approved_meanwhile_still_blocks(two_partners: World) -> None:
    app = two_partners.app
    two_partners.submit("R-A", "P-A", MINH_PHAT_VI, when=at(1))
    cid = the_conflict(two_partners.submit("R-B", "P-B", MINH_PHAT_EN, when=at(2)))
    app.approve_registration("R-A", actor=ADMIN, at=at(3))
    with pytest.raises(ChannelConflictBlocks, match=cid):
        app.approve_registration("R-B", actor=ADMIN, at=at(4))
    app.expire_registrations(at=at(93))
    app.approve_registration("R-B", actor=ADMIN, at=at(94))


def test_registrations_round_trip(two_partners: World) -> None:
    app = two_partners.app
    registration = submitted("R-RT", conflicts_with=[blocker("C-1")])
    registration.resolve_conflict(
        conflict_id="C-1", kind=PARTNER_VS_PARTNER, winner="R-RT", actor=ADMIN, reason="first", at=at(1)
    )
    registration.approve(actor=ADMIN, at=at(2), protection_days=90, blocking=[blocker("C-1")])
    registration.extend_protection(actor=ADMIN, reason="budget", at=at(3), extension_days=30)
    registration.mark_won(sale_id="S-1", at=at(4))
    app.save(registration)
    assert state_of(app.registration("R-RT")) == state_of(registration)

    two_partners.submit("R-A", "P-A", MINH_PHAT_VI, when=at(1))
    two_partners.submit("R-B", "P-B", MINH_PHAT_EN, when=at(2))
    stored = app.registration("R-B")
    replayed: Any = None
    for domain_event in app.events.get(stored.id):
        replayed = domain_event.mutate(replayed)
    assert state_of(replayed) == state_of(stored)
    assert stored.conflicts_with[0]["evidence"] == {
        "rule": "name",
        "left": "minh phat",
        "right": "minh phat",
        "score": 1.0,
    }
